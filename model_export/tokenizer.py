"""CLIP BPE tokenisation without torch: a HF ``tokenizers`` file equivalent to open_clip's SimpleTokenizer.

``build_tokenizer_json`` turns open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz`` into ``tokenizer.json``
(byte-level alphabet, BPE with the ``</w>`` end-of-word suffix, open_clip's split regex, NFC + whitespace
collapse + lower-case normaliser, ``<start_of_text> $A <end_of_text>`` template).
``ClipTokenizer`` reads that file and reproduces ``open_clip.tokenize``: ftfy + html cleaning, then ids padded
with 0 / truncated to the context length with EOT kept last. Dependencies: tokenizers, ftfy, numpy.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP (the vocab file has a header line and spare merges)
SPLIT_PATTERN = f"{SOT_TOKEN}|{EOT_TOKEN}" + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of the byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes map to themselves (listed first, ascending); the other bytes map to code
    points 256, 257, ... in ascending byte order (listed after).
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def default_bpe_path() -> Path:
    """open_clip's bundled vocabulary file, located without importing open_clip (and torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; pass bpe_path explicitly")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _read_merges(bpe_path: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path}: expected {NUM_MERGES} merge pairs")
    return merges  # type: ignore[return-value]


def build_tokenizer(bpe_path: str | os.PathLike[str] | None = None) -> Tokenizer:
    """HF Tokenizer reproducing open_clip's SimpleTokenizer (clean='lower') on pre-cleaned text."""
    merges = _read_merges(Path(bpe_path) if bpe_path else default_bpe_path())
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if vocab[SOT_TOKEN] != SOT_TOKEN_ID or vocab[EOT_TOKEN] != EOT_TOKEN_ID or len(vocab) != len(tokens):
        raise ValueError("unexpected CLIP vocabulary layout")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=True) for t in (SOT_TOKEN, EOT_TOKEN)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}",
        special_tokens=[(SOT_TOKEN, SOT_TOKEN_ID), (EOT_TOKEN, EOT_TOKEN_ID)],
    )
    return tok


def build_tokenizer_json(
    out_path: str | os.PathLike[str], bpe_path: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``tokenizer.json`` (see :func:`build_tokenizer`) and return its path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    build_tokenizer(bpe_path).save(str(out))
    return out


def clean_text(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy fix, html unescape (twice), collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Torch-free equivalent of ``open_clip.tokenize`` backed by a ``tokenizer.json`` file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_truncation()
        self._tok.no_padding()

    def encode_batch(self, texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """texts -> int64 (N, context_length): [SOT, ..., EOT, 0, ...]; over-long rows keep EOT last."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.full((len(texts), context_length), PAD_TOKEN_ID, dtype=np.int64)
        if not texts:
            return out
        for row, enc in enumerate(self._tok.encode_batch([clean_text(t) for t in texts])):
            ids = enc.ids[:context_length]
            if len(enc.ids) > context_length:
                ids[-1] = EOT_TOKEN_ID
            out[row, : len(ids)] = ids
        return out
