"""Text-segment from the CLIP head: one mask per text, at the original image size.

1. Logits on the patch grid: for every class c (the query texts, then the background prompts),
   logits[c] = logit_scale * <patch_embeddings[y, x], text[c]> (both L2-normalised: a scaled cosine), (C, h, w).
2. Each class's logit map is upscaled bilinearly (align_corners=False) to the S x S input frame, cropped to the
   resized image [:new_h, :new_w], and resized bilinearly to the ORIGINAL (H, W) — the same path as SAM masks.
3. Per pixel, a softmax over all classes [texts..., background prompts...].
   DECISION RULE: a pixel belongs to text t when t has the highest probability of all classes (texts AND
   background prompts). With one text and one background prompt this is exactly "probability > 0.5"; with
   several texts the masks never overlap, and a pixel won by a background prompt belongs to no mask.
   score(t) = mean probability of t over its mask pixels (0.0 for an empty mask).
"""

from __future__ import annotations

import numpy as np

from service.images.entry import ImageEntry
from service.images.transforms import postprocess_masks
from service.tasks.heads import Heads
from service.tasks.results import MaskResult
from service.timing import Timings

_CHUNK = 4  # classes upscaled to full resolution at once (bounds memory to 4 x H x W float32)


def class_logits(
    patch_embeddings: np.ndarray, class_embeddings: np.ndarray, logit_scale: float
) -> np.ndarray:
    """patch_embeddings (h, w, D), class_embeddings (C, D), both L2-normalised -> (C, h, w) float32."""
    grid = np.einsum("hwd,cd->chw", patch_embeddings.astype(np.float32), class_embeddings.astype(np.float32))
    return (grid * np.float32(logit_scale)).astype(np.float32)


def _full_res_chunks(
    logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], size: int
):
    for start in range(0, logits.shape[0], _CHUNK):
        yield start, postprocess_masks(logits[start : start + _CHUNK], input_size, original_size, size)


def text_masks(
    logits: np.ndarray,
    labels: list[str],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> list[MaskResult]:
    """logits (C, h, w) from class_logits; labels: the len(labels) <= C query texts (the first channels).
    Returns one MaskResult per label at ORIGINAL size (iou_prediction None). Two passes over the classes keep
    memory at a few (H, W) arrays whatever C is."""
    height, width = original_size
    best = np.full((height, width), -np.inf, dtype=np.float32)
    winner = np.zeros((height, width), dtype=np.int16)
    for start, chunk in _full_res_chunks(logits, input_size, original_size, image_size):
        for offset, channel in enumerate(chunk):
            better = channel > best
            best = np.where(better, channel, best)
            winner[better] = start + offset
    denom = np.zeros((height, width), dtype=np.float32)
    for _, chunk in _full_res_chunks(logits, input_size, original_size, image_size):
        denom += np.exp(chunk - best[None]).sum(axis=0)
    results = []
    for t, label in enumerate(labels):
        mask = winner == t
        score = float(np.mean(1.0 / denom[mask])) if mask.any() else 0.0  # p_t = exp(0) / denom where t wins
        results.append(MaskResult(mask=mask, score=score, iou_prediction=None, label=label))
    return results


def segment_text(
    heads: Heads, entry: ImageEntry, classes: np.ndarray, texts: list[str], timings: Timings
) -> list[MaskResult]:
    """classes (C, D): the texts' embeddings followed by the background prompts' -> one mask per text."""
    clip = heads.clip(entry, timings)
    logits = class_logits(clip.patch_embeddings[0], classes, heads.logit_scale)
    with timings.measure("postprocess"):
        return text_masks(logits, texts, entry.input_size, entry.original_size, heads.image_size)
