"""Text-segment from the CLIP head, and the CLIP -> SAM refine composition (seed paper, appendix A.3).

Text segment (`text_segment`)
1. Logits on the patch grid: for every class c (the query texts, then the background prompts),
   logits[c] = logit_scale * <patch_embeddings[y, x], text[c]> (both L2-normalised: a scaled cosine), (C, h, w).
2. Each class's logit map is upscaled bilinearly (align_corners=False) to the S x S input frame, cropped to the
   resized image [:new_h, :new_w], and resized bilinearly to the ORIGINAL (H, W) — the same path as SAM masks.
3. Per pixel, a softmax over all classes [texts..., background prompts...].
   DECISION RULE: a pixel belongs to text t when t has the highest probability of all classes (texts AND
   background prompts). With one text and one background prompt this is exactly "probability > 0.5"; with
   several texts the masks never overlap, and a pixel won by a background prompt belongs to no mask.
   score(t) = mean probability of t over its mask pixels (0.0 for an empty mask).

Refine (`coarse_confidence`, `mask_prompt`, `sample_points`, then the SAM decoder in the predictor)
1. Low-res confidence: the class logits (C, h, w) are upscaled bilinearly to the decoder's low-res frame
   (4h, 4w) (both grids cover the padded S x S input), softmaxed over classes; conf = probability of the text.
   The coarse region = cells the text wins (same rule as above) whose centre lies inside the image.
2. mask_input = log-odds of conf, clipped to +-MASK_LOGIT_CLIP, and -MASK_LOGIT_CLIP on padding cells.
3. Positive points: `num_points` distinct cells of the coarse region drawn without replacement with
   probability proportional to conf (numpy Generator(seed): same seed, same points), placed at cell centres
   (INPUT frame). If the coarse region is empty, the single most confident in-image cell is used.
   Optional negatives are drawn the same way from the rest of the image with weight 1 - conf.
4. SAM decoder with those points (+ SAM's padding point) and the mask input; of its 4 outputs the one with
   the highest predicted IoU is kept and postprocessed to the original size.
"""

from __future__ import annotations

import numpy as np

from service.pipeline.results import MaskResult
from service.pipeline.transforms import postprocess_masks, resize_bilinear

MASK_LOGIT_CLIP = 10.0
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


def text_segment(
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


def _softmax0(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def valid_cells(grid: int, input_size: tuple[int, int], image_size: int) -> np.ndarray:
    """(grid, grid) bool: low-res cells whose centre lies inside the resized image (not the padding)."""
    centres = (np.arange(grid) + 0.5) * (image_size / grid)
    return (centres[:, None] < input_size[0]) & (centres[None, :] < input_size[1])


def coarse_confidence(logits: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """logits (C, h, w), text = channel 0 -> (conf (grid, grid) float32 probability of the text,
    wins (grid, grid) bool where the text has the highest probability)."""
    probs = _softmax0(resize_bilinear(logits, (grid, grid)))
    return probs[0].astype(np.float32), probs.argmax(axis=0) == 0


def mask_prompt(conf: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """conf (g, g) probabilities -> (1, g, g) float32 log-odds clipped to +-MASK_LOGIT_CLIP (padding: -clip)."""
    p = np.clip(conf.astype(np.float64), 1e-6, 1 - 1e-6)
    logit = np.clip(np.log(p / (1 - p)), -MASK_LOGIT_CLIP, MASK_LOGIT_CLIP)
    logit[~valid] = -MASK_LOGIT_CLIP
    return logit.astype(np.float32)[None]


def _draw(weights: np.ndarray, cells: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(cells)
    if count <= 0 or idx.size == 0:
        return np.zeros((0,), dtype=np.int64)
    w = weights.reshape(-1)[idx].astype(np.float64) + 1e-12
    return rng.choice(idx, size=min(count, idx.size), replace=False, p=w / w.sum())


def sample_points(
    conf: np.ndarray,
    region: np.ndarray,
    valid: np.ndarray,
    num_points: int,
    seed: int,
    image_size: int,
    num_negative: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance-sample prompts from the low-res confidence (see module docstring).

    conf, region, valid: (g, g). Returns (coords (N, 2) float32 [x, y] INPUT frame, labels (N,) float32)."""
    grid = conf.shape[0]
    rng = np.random.default_rng(seed)
    positives = region & valid
    pos = _draw(conf, positives, num_points, rng)
    if pos.size == 0:  # empty coarse mask: most confident in-image cell
        pos = np.array([np.flatnonzero(valid)[np.argmax(conf[valid])]])
    neg = _draw(1.0 - conf, valid & ~positives, num_negative, rng)
    cells = np.concatenate([pos, neg])
    cell = image_size / grid
    coords = np.stack([(cells % grid + 0.5) * cell, (cells // grid + 0.5) * cell], axis=1).astype(np.float32)
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)]).astype(np.float32)
    return coords, labels
