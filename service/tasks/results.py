"""Result types of the tasks (service/tasks/*), rendered by service/render.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelScore:
    """One zero-shot label: softmax probability over the requested labels and the scaled cosine logit."""

    label: str
    probability: float
    logit: float


@dataclass
class MaskResult:
    """mask: (H, W) bool at ORIGINAL image size. score: predicted IoU for SAM masks, mean text probability
    inside the mask for text masks. low_res_logits: (4h, 4w) float32 decoder logits over the padded S x S
    input frame (usable as a later mask_input), or None."""

    mask: np.ndarray
    score: float
    iou_prediction: float | None = None
    label: str | None = None
    low_res_logits: np.ndarray | None = None


@dataclass
class RefineResult:
    """mask: the SAM-refined mask; coarse: the CLIP-head text mask it started from; points: the sampled
    prompts as (x, y, label) in ORIGINAL pixels (label 1 positive, 0 negative)."""

    mask: MaskResult
    coarse: MaskResult
    points: list[tuple[float, float, int]]
