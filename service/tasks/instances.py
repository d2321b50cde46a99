"""Text -> instances: one SAM mask per object a text selects (`/segment?text=...&instances=true`).

1. The text masks exactly as text-segment makes them (service/tasks/textseg.py: argmax over the texts and the
   background prompts, at ORIGINAL size), and the per-pixel softmax probability of the winning class.
2. Each text mask is split into connected components (cv2.connectedComponentsWithStats, 8-connectivity).
   Components smaller than `min_area` pixels are dropped; of the rest, the `max_instances` largest per text
   are kept (ties: scan order). text_score = the mean probability of the text over the component's pixels.
3. Each component's bounding box [x, y, x + w, y + h] (pixel edges, ORIGINAL px) becomes a SAM box prompt.
   ALL boxes, of every text, go through the SAM decoder in ONE batched call (service/tasks/prompt.py: box
   prompts have two tokens each, so they form one group) with SAM's single-mask output.
4. Each instance: its own mask (logits > 0 at ORIGINAL size), score = iou_prediction = SAM's predicted IoU,
   label = its text, text_score, instance = its index within its text. Order: texts in request order, then
   score descending (instance 0 is the best-scored one). No component -> no instance and no decoder call.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from service.images.entry import ImageEntry
from service.images.transforms import postprocess_masks
from service.tasks.heads import Heads
from service.tasks.prompt import Prompt, segment_prompts
from service.tasks.results import MaskResult
from service.tasks.textseg import class_logits, text_masks
from service.timing import Timings

CLASS_CHUNK = 4
"""Classes upscaled to ORIGINAL size at once while computing the winner's probability."""


@dataclass
class InstanceMask(MaskResult):
    """A SAM mask for one component of a text mask: instance = index within its text (0 = best score);
    text_score = mean text probability over the component (the coarse CLIP-head region)."""

    instance: int = 0
    text_score: float = 0.0


@dataclass(frozen=True)
class Component:
    """One connected part of a text mask: text index, box [x0, y0, x1, y1] (pixel edges, ORIGINAL px), area
    in pixels, text_score."""

    text: int
    box: tuple[float, float, float, float]
    area: int
    text_score: float


def winner_probability(
    logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
) -> np.ndarray:
    """logits (C, h, w) -> (H, W) float32: at every ORIGINAL pixel the softmax probability (over all C
    classes) of the class with the highest logit there (inside text t's mask: the probability of t). One
    streaming pass over the classes (running maximum, rescaled sum), CLASS_CHUNK full-size maps at a time."""
    best: np.ndarray | None = None
    total: np.ndarray | None = None
    for start in range(0, logits.shape[0], CLASS_CHUNK):
        chunk = postprocess_masks(logits[start : start + CLASS_CHUNK], input_size, original_size, image_size)
        top = chunk.max(axis=0)
        if best is None or total is None:
            best, total = top, np.zeros_like(top)
        else:
            new = np.maximum(best, top)
            total *= np.exp(best - new)
            best = new
        total += np.exp(chunk - best[None]).sum(axis=0)
    assert total is not None, "at least one class"
    return (1.0 / total).astype(np.float32)


def components(
    mask: np.ndarray, probability: np.ndarray, text: int, min_area: int, max_instances: int
) -> list[Component]:
    """mask (H, W) bool, probability (H, W) float32 -> the kept components of step 2, largest first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return []
    sums = np.bincount(labels.reshape(-1), weights=probability.reshape(-1), minlength=count)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    order = [i for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area][:max_instances]
    out = []
    for i in order:
        x, y, w, h = (int(v) for v in stats[i + 1, :4])
        area = int(areas[i])
        out.append(
            Component(text, (float(x), float(y), float(x + w), float(y + h)), area, sums[i + 1] / area)
        )
    return out


def segment_instances(
    heads: Heads,
    entry: ImageEntry,
    classes: np.ndarray,
    texts: list[str],
    min_area: int,
    max_instances: int,
    timings: Timings,
) -> list[InstanceMask]:
    """See the module docstring. classes (C, D): the texts' embeddings, then the background prompts'."""
    clip = heads.clip(entry, timings)
    logits = class_logits(clip.patch_embeddings[0], classes, heads.logit_scale)
    with timings.measure("postprocess"):
        masks = text_masks(logits, texts, entry.input_size, entry.original_size, heads.image_size)
        probability = winner_probability(logits, entry.input_size, entry.original_size, heads.image_size)
        parts = [
            part
            for t, result in enumerate(masks)
            for part in components(result.mask, probability, t, min_area, max_instances)
        ]
    if not parts:
        return []
    groups = segment_prompts(heads, entry, [Prompt(box=p.box) for p in parts], False, timings)
    return _instances(texts, parts, [group[0] for group in groups])


def _instances(texts: list[str], parts: list[Component], masks: list[MaskResult]) -> list[InstanceMask]:
    """Step 4: per text in request order, its parts' SAM masks by score descending."""
    found: list[InstanceMask] = []
    for t, text in enumerate(texts):
        mine = sorted(
            ((part, sam) for part, sam in zip(parts, masks, strict=True) if part.text == t),
            key=lambda pair: -pair[1].score,
        )
        for index, (part, sam) in enumerate(mine):
            found.append(
                InstanceMask(
                    **sam.held(),
                    score=sam.score,
                    iou_prediction=sam.iou_prediction,
                    label=text,
                    low_res_logits=sam.low_res_logits,
                    instance=index,
                    text_score=float(part.text_score),
                )
            )
    return found
