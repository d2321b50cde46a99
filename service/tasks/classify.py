"""Zero-shot classification: softmax over the labels of logit_scale * cos(image embedding, label embedding)."""

from __future__ import annotations

import numpy as np

from service.images.entry import ImageEntry
from service.tasks.heads import Heads
from service.tasks.results import LabelScore
from service.timing import Timings


def classify(
    heads: Heads, entry: ImageEntry, text: np.ndarray, labels: list[str], top_k: int, timings: Timings
) -> list[LabelScore]:
    """text (L, D) float32 L2-normalised label embeddings (one row per label) -> the top_k labels, best first
    (ties keep request order). Probabilities sum to 1 over ALL labels, not only the returned ones."""
    clip = heads.clip(entry, timings)
    logits = heads.logit_scale * (text.astype(np.float32) @ clip.image_embedding[0].astype(np.float32))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-logits, kind="stable")[: max(1, int(top_k))]
    return [LabelScore(labels[i], float(probs[i]), float(logits[i])) for i in order]
