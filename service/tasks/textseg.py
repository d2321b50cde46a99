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

Fast path (`text_masks`): step 2 runs to the input frame only (upscale_to_input). With one text and one
background prompt whose difference map has few runs (a CLIP-head map is smooth at the image's scale) the text
mask comes out as RLE runs straight from that map (service/images/runs.py: no original-size array). Otherwise the
per-pixel rule is applied at original size by `upsample_decision_t` (service/images/transforms.py, on the
transposed maps): the first argmax of the bilinearly resized class logits (argmax of the probabilities ==
argmax of the logits), without forming the (C, H, W) maps; with one text and one background prompt, text wins
where (background - text) is not > 0, one map. The masks are those of the plain path (`full_res_text_masks`,
kept as the reference) except where two classes tie within float32 rounding. The score's mean is taken over the
pixels t wins in the input frame (new_w x new_h, transposed) instead of at original size - the same average
sampled at the model's resolution (a mask that exists at original size only, a sliver narrower than one input
pixel, averages its own pixels).
"""

from __future__ import annotations

import numpy as np

from service.images.entry import ImageEntry
from service.images.runs import MaskRuns, few_runs, input_map_runs
from service.images.transforms import LinearAxis, postprocess_masks, upsample_decision_t, upscale_to_input
from service.tasks.heads import Heads
from service.tasks.results import MaskResult
from service.timing import Timings

_CHUNK = 4  # classes upscaled to full resolution at once (bounds memory to 4 x H x W float32)


def class_logits(
    patch_embeddings: np.ndarray, class_embeddings: np.ndarray, logit_scale: float
) -> np.ndarray:
    """patch_embeddings (h, w, D) float32 or float16, class_embeddings (C, D), both L2-normalised -> (C, h, w)
    float32."""
    h, w, dim = patch_embeddings.shape
    flat = patch_embeddings.reshape(h * w, dim).astype(np.float32)  # float16 cache -> float32
    grid = (flat @ class_embeddings.astype(np.float32).T) * np.float32(logit_scale)  # (h*w, C)
    return np.ascontiguousarray(grid.T).reshape(-1, h, w)


def _full_res_chunks(
    logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], size: int
):
    for start in range(0, logits.shape[0], _CHUNK):
        yield start, postprocess_masks(logits[start : start + _CHUNK], input_size, original_size, size)


def full_res_text_masks(
    logits: np.ndarray,
    labels: list[str],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> list[MaskResult]:
    """The plain path of `text_masks` (original-size float maps). logits (C, h, w) from class_logits; labels:
    the len(labels) <= C query texts (the first channels). Returns one MaskResult per label at ORIGINAL size
    (iou_prediction None). Two passes over the classes keep memory at a few (H, W) arrays whatever C is."""
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


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _input_frame_winners(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """up (C, n_h, n_w) class logits -> (winner (n_h, n_w) uint8: the first argmax, its probability (n_h, n_w)
    float32: the largest softmax probability). C = 2: from the one difference map."""
    if len(up) == 2:
        diff = up[1] - up[0]  # background - text: text wins where diff <= 0
        return (diff > 0).view(np.uint8), 1.0 / (1.0 + np.exp(-np.abs(diff)))
    best = up.max(axis=0)
    winner = np.full(best.shape, len(up) - 1, np.uint8)
    for c in range(len(up) - 2, -1, -1):  # lowest class index last: ties go to the first argmax
        winner[up[c] == best] = c
    return winner, 1.0 / np.exp(up - best).sum(axis=0)


def _sliver_score(up_t: np.ndarray, mask: np.ndarray, t: int) -> float:
    """Mean probability of class t over the pixels of an original-size mask (few pixels: each resampled).
    up_t (C, n_w, n_h): the input-frame class logits, transposed."""
    xs, ys = np.nonzero(mask.T)  # the mask is F-ordered: its transpose is the cheap one to scan
    ay, ax = LinearAxis.of(up_t.shape[2], mask.shape[0]), LinearAxis.of(up_t.shape[1], mask.shape[1])
    by_row = np.ascontiguousarray(up_t)  # (C, w, h)
    left, right = ay.at(by_row, ax.lo[xs], ys), ay.at(by_row, ax.hi[xs], ys)
    return float(np.mean(_softmax(left + ax.w[xs] * (right - left))[t]))


def _two_class_masks(
    logits: np.ndarray, up: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], size: int
) -> list[np.ndarray | MaskRuns]:
    """[text, background] for C = 2 (one text, one background prompt): background wins where background - text
    > 0. As RLE runs straight from the input-frame difference map when it has few runs (service/images/runs.py;
    a CLIP-head map is smooth at the image's scale), else the Fortran-ordered bitmaps."""
    if few_runs(logits[1] - logits[0], input_size, original_size, size):
        background = input_map_runs(up[1] - up[0], original_size)
        if background is not None:
            return [background.inverted(), background]
    bitmap = upsample_decision_t(up[1:] - up[:1], original_size)
    return [~bitmap, bitmap]


def _empty(mask: np.ndarray | MaskRuns) -> bool:
    return mask.area() == 0 if isinstance(mask, MaskRuns) else not mask.any()


def text_masks(
    logits: np.ndarray,
    labels: list[str],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> list[MaskResult]:
    """logits (C, h, w) from class_logits; labels: the len(labels) <= C query texts (the first channels).
    Returns one MaskResult per label at ORIGINAL size (as RLE runs, or (H, W) bool in Fortran order;
    iou_prediction None). The fast path (module docstring)."""
    up = upscale_to_input(logits, input_size, image_size, transposed=True)  # (C, new_w, new_h) float32
    won, prob = _input_frame_winners(up)  # transposed too: only their means over pixels are used
    if len(up) == 2:  # one text, one background prompt: text wins unless background - text > 0
        masks = _two_class_masks(logits, up, input_size, original_size, image_size)[: len(labels)]
    else:
        winners = upsample_decision_t(up, original_size)
        masks = [winners == t for t in range(len(labels))]
    results = []
    for t, (label, mask) in enumerate(zip(labels, masks, strict=True)):
        result = MaskResult.holding(mask, score=0.0, iou_prediction=None, label=label)
        inside = won == t
        if not _empty(mask):
            result.score = float(prob[inside].mean()) if inside.any() else _sliver_score(up, result.mask, t)
        results.append(result)
    return results


def masks_of_texts(
    heads: Heads, entry: ImageEntry, logits: np.ndarray, labels: list[str]
) -> list[MaskResult]:
    """`text_masks` for the entry, or the plain path when the heads run plain post-processing."""
    masks = full_res_text_masks if heads.plain else text_masks
    return masks(logits, labels, entry.input_size, entry.original_size, heads.image_size)


def segment_text(
    heads: Heads, entry: ImageEntry, classes: np.ndarray, texts: list[str], timings: Timings
) -> list[MaskResult]:
    """classes (C, D): the texts' embeddings followed by the background prompts' -> one mask per text."""
    clip = heads.clip(entry, timings)
    logits = class_logits(clip.patch_embeddings[0], classes, heads.logit_scale)
    with timings.measure("postprocess"):
        return masks_of_texts(heads, entry, logits, texts)
