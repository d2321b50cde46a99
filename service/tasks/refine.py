"""CLIP -> SAM refine (seed paper, appendix A.3): the CLIP head's coarse text mask becomes SAM prompts.

1. Low-res confidence: the class logits (C, h, w) (textseg.class_logits: the text, then the background prompts)
   are upscaled bilinearly to the decoder's low-res frame (4h, 4w) (both grids cover the padded S x S input),
   softmaxed over classes; conf = probability of the text. The coarse region = cells the text wins (same rule as
   text-segment) whose centre lies inside the image.
2. An EMPTY coarse region (the text wins nowhere) gives an empty result: empty fine and coarse masks with score
   0 and no points. SAM is not asked to grow a confident mask from a point the text did not select.
3. mask_input = log-odds of conf, clipped to +-MASK_LOGIT_CLIP, and -MASK_LOGIT_CLIP on padding cells.
4. Positive points: `num_points` distinct cells of the coarse region drawn without replacement with
   probability proportional to conf (numpy Generator(seed): same seed, same points), placed at cell centres
   (INPUT frame). Optional negatives are drawn the same way from the rest of the image with weight 1 - conf.
5. SAM decoder with those points (+ SAM's padding point) and the mask input; of its 4 outputs the one with
   the highest predicted IoU is kept and postprocessed to the original size.
"""

from __future__ import annotations

import numpy as np

from service.images.entry import ImageEntry
from service.images.transforms import resize_bilinear, unmap_coords
from service.tasks.heads import Heads
from service.tasks.results import MaskResult, RefineResult
from service.tasks.textseg import class_logits, masks_of_texts
from service.timing import Timings

MASK_LOGIT_CLIP = 10.0


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

    conf, region, valid: (g, g). Returns (coords (N, 2) float32 [x, y] INPUT frame, labels (N,) float32);
    N = 0 when the region holds no in-image cell."""
    grid = conf.shape[0]
    rng = np.random.default_rng(seed)
    positives = region & valid
    pos = _draw(conf, positives, num_points, rng)
    if pos.size == 0:  # empty coarse region: nothing to refine (see module docstring)
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
    neg = _draw(1.0 - conf, valid & ~positives, num_negative, rng)
    cells = np.concatenate([pos, neg])
    cell = image_size / grid
    coords = np.stack([(cells % grid + 0.5) * cell, (cells // grid + 0.5) * cell], axis=1).astype(np.float32)
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)]).astype(np.float32)
    return coords, labels


def refine(
    heads: Heads,
    entry: ImageEntry,
    classes: np.ndarray,
    text: str,
    num_points: int,
    seed: int,
    timings: Timings,
) -> RefineResult:
    """classes (C, D): the text's embedding, then the background prompts'. See the module docstring."""
    clip = heads.clip(entry, timings)
    logits = class_logits(clip.patch_embeddings[0], classes, heads.logit_scale)
    valid = valid_cells(heads.mask_grid, entry.input_size, heads.image_size)
    conf, wins = coarse_confidence(logits, heads.mask_grid)
    with timings.measure("postprocess"):
        (coarse,) = masks_of_texts(heads, entry, logits, [text])
    coords, labels = sample_points(conf, wins, valid, num_points, seed, heads.image_size)
    if len(coords) == 0:
        empty = MaskResult(
            mask=np.zeros(entry.original_size, bool), score=0.0, iou_prediction=0.0, label=text
        )
        return RefineResult(mask=empty, coarse=coarse, points=[])
    out = heads.decode(
        entry,
        np.concatenate([coords, np.zeros((1, 2), np.float32)])[None],
        np.concatenate([labels, [-1.0]]).astype(np.float32)[None],
        mask_prompt(conf, valid)[None],
        np.ones((1,), np.float32),
        timings,
    )
    best = int(np.argmax(out.iou_predictions[0]))
    (fine,) = heads.masks(entry, out.low_res_masks[0, [best]], out.iou_predictions[0, [best]], timings, text)
    original = unmap_coords(coords, entry.original_size, heads.image_size)
    points = [(float(x), float(y), int(lab)) for (x, y), lab in zip(original, labels, strict=True)]
    return RefineResult(mask=fine, coarse=coarse, points=points)
