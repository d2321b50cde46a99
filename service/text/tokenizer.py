"""Torch-free CLIP tokenizer: the bundle's tokenizer.json run by the `tokenizers` library.

Produces the same ids as `open_clip.tokenize` (SimpleTokenizer, clean="lower"):
text -> ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace -> lower-case -> CLIP BPE;
then [sot] + ids + [eot], truncated to context_length keeping eot as the last id, padded with pad_token_id.
Output: (N, context_length) int64.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
from tokenizers import Tokenizer


def clean_text(text: str) -> str:
    """open_clip's `_clean_lower`: ftfy, double html unescape, whitespace collapse, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Callable: list of strings -> (N, context_length) int64 ids."""

    def __init__(
        self,
        path: str | Path,
        *,
        context_length: int = 77,
        sot_token_id: int = 49406,
        eot_token_id: int = 49407,
        pad_token_id: int = 0,
    ) -> None:
        self._tok = Tokenizer.from_file(str(path))
        self.context_length = int(context_length)
        self.sot_token_id = int(sot_token_id)
        self.eot_token_id = int(eot_token_id)
        self.pad_token_id = int(pad_token_id)

    @classmethod
    def from_bundle(cls, bundle: Any) -> ClipTokenizer:
        meta = bundle.manifest.tokenizer
        return cls(
            bundle.tokenizer_path,
            context_length=meta.context_length,
            sot_token_id=meta.sot_token_id,
            eot_token_id=meta.eot_token_id,
            pad_token_id=meta.pad_token_id,
        )

    def encode(self, text: str) -> list[int]:
        """BPE ids of one cleaned text, without start/end tokens."""
        return list(self._tok.encode(clean_text(text), add_special_tokens=False).ids)

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        cleaned = [clean_text(t) for t in texts]
        encodings = self._tok.encode_batch(cleaned, add_special_tokens=False) if cleaned else []
        out = np.full((len(cleaned), self.context_length), self.pad_token_id, dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids = [self.sot_token_id, *enc.ids, self.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out
