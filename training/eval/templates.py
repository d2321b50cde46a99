"""OpenAI's 80 ImageNet prompt templates (from open_clip) and text-embedding helpers."""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def tokenize(texts: list[str]) -> torch.Tensor:
    """CLIP BPE tokenisation (open_clip's SimpleTokenizer): list of N str -> (N, 77) int64."""
    return open_clip.tokenize(texts)


@torch.no_grad()
def class_embeddings(
    encode_text, classnames: list[str], templates: tuple[str, ...] = TEMPLATES
) -> torch.Tensor:
    """Template-ensembled class embeddings (the CLIP protocol): mean of the L2-normalised embeddings of all
    templates, re-normalised. encode_text: (N, 77) int64 -> (N, D). Returns (C, D) float32."""
    out = []
    for name in classnames:
        emb = F.normalize(encode_text(tokenize([t.format(name) for t in templates])).float(), dim=-1)
        out.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(out)
