"""Open-vocabulary labels for SAM masks from the CLIP head's dense features (segment everything with labels).

Grids: the CLIP patch_embeddings (h, w, D) and the decoder's low-res logits (4h, 4w) both cover the padded
S x S INPUT frame, so patch cell (i, j) holds the low-res cells [4i, 4i + 4) x [4j, 4j + 4).

1. A mask's weight on patch cell c = how many of c's 16 low-res cells have logit > 0 (`cell_coverage`).
2. pooled = sum_c weight[c] * patch_embeddings[c] / sum_c weight[c]: the mean of the patch embeddings over the
   mask's cells, each cell counted by the share of it the mask covers. A mask covering no low-res cell (a
   sliver) uses the patch cell holding its anchor point (its grid point, INPUT frame).
3. pooled is L2-normalised; logits = logit_scale * pooled . label_embeddings (scaled cosines, the labels'
   embeddings are the 80-template ensembles, L2-normalised); softmax over the labels.
   label = the argmax (ties: the first label), label_score = its probability.
"""

from __future__ import annotations

import numpy as np

CELL = 4
"""Low-res cells per patch cell along each side (the decoder upsamples the embedding grid 4x)."""


def cell_coverage(masks: np.ndarray, grid: int) -> np.ndarray:
    """masks (M, 4h, 4w) bool low-res masks -> (M, h, w) uint8: covered low-res cells per patch cell (0..16);
    grid = h = w."""
    count = len(masks)
    return masks.reshape(count, grid, CELL, grid, CELL).sum(axis=(2, 4), dtype=np.int32).astype(np.uint8)


def pooled_embeddings(
    cells: np.ndarray, anchors: np.ndarray, patch_embeddings: np.ndarray, image_size: int
) -> np.ndarray:
    """cells (M, h, w) from cell_coverage, anchors (M, 2) [x, y] INPUT frame, patch_embeddings (h, w, D) ->
    (M, D) float32 L2-normalised mask embeddings (steps 1-2 and the normalisation of step 3)."""
    count, grid = len(cells), patch_embeddings.shape[0]
    weights = cells.reshape(count, -1).astype(np.float32)
    empty = weights.sum(axis=1) == 0
    if empty.any():
        cell = image_size / grid
        col = np.clip((anchors[empty, 0] // cell).astype(np.int64), 0, grid - 1)
        row = np.clip((anchors[empty, 1] // cell).astype(np.int64), 0, grid - 1)
        weights[np.flatnonzero(empty), row * grid + col] = 1.0
    flat = patch_embeddings.reshape(grid * grid, -1).astype(np.float32)
    pooled = (weights @ flat) / weights.sum(axis=1, keepdims=True)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12)


def label_masks(
    cells: np.ndarray,
    anchors: np.ndarray,
    patch_embeddings: np.ndarray,
    label_embeddings: np.ndarray,
    logit_scale: float,
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """label_embeddings (L, D) L2-normalised -> (best label index (M,) int64, its probability (M,) f32)."""
    pooled = pooled_embeddings(cells, anchors, patch_embeddings, image_size)
    logits = np.float32(logit_scale) * (pooled @ label_embeddings.astype(np.float32).T)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    return best, probs[np.arange(len(best)), best].astype(np.float32)
