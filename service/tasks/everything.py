"""Segment everything: SAM's automatic mask generation (segment_anything's SamAutomaticMaskGenerator in its
single-crop mode: crop_n_layers=0, min_mask_region_area=0) on the cached embedding, so never a second encoder
pass; optionally every mask gets an open-vocabulary label from the CLIP head's dense features (labels.py).

1. Point grid (ORIGINAL px [x, y]): with n = points_per_side, point (i, j) = ((j + 0.5) / n * W,
   (i + 0.5) / n * H), row-major (y outer) — SAM's build_point_grid scaled by the image size.
2. Batches of `points_per_batch` grid points, ONE decoder call each: K prompts of one positive point (mapped
   to the INPUT frame) plus SAM's padding point; SAM's 3 multimask outputs (decoder outputs 1..3) per point.
3. Filters, in SAM's order, per candidate mask:
   - predicted IoU > pred_iou_thresh (no filter when it is 0);
   - the low-res logits upscaled to ORIGINAL size (Heads' postprocessing == Sam.postprocess_masks);
     stability score = |logits > 1| / |logits > -1| (SAM's offset 1 around its mask threshold 0), kept when
     >= stability_score_thresh (no filter when 0);
   - mask = logits > 0; box = [x0, y0, x1, y1] as inclusive pixel indices ([0, 0, 0, 0] when empty).
   Survivors are held as COCO RLE (pycocotools), so memory stays small whatever the image size.
4. Box NMS over all survivors ranked by predicted IoU (cv2.dnn.NMSBoxes): a box whose IoU with a better kept
   box is > box_nms_thresh is dropped; IoU uses areas (x1 - x0) * (y1 - y0), as torchvision's batched_nms in
   SAM; boxes of zero area, which torchvision neither suppresses nor lets suppress, are all kept. The result
   is ordered by predicted IoU descending and cut to `max_masks`.
5. With labels: see service/tasks/labels.py (mask-pooled CLIP patch embeddings vs the labels' embeddings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from service.errors import DeadlineExceeded
from service.images.entry import ImageEntry
from service.images.transforms import map_coords, postprocess_masks
from service.tasks.heads import Heads
from service.tasks.labels import cell_coverage, label_masks
from service.tasks.results import MaskResult
from service.timing import Timings

MULTIMASK = [1, 2, 3]
STABILITY_OFFSET = 1.0
UPSCALE_BYTES = 64 * 1024**2
"""Bound of the float32 full-size logits held at once while filtering (at least one mask)."""


@dataclass(frozen=True)
class EverythingParams:
    """The request's knobs (SamAutomaticMaskGenerator's names); thresholds in [0, 1]."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    max_masks: int = 100


@dataclass
class EverythingMask(MaskResult):
    """A MaskResult (score = iou_prediction = SAM's predicted IoU) plus the stability score, the grid point
    that produced it (ORIGINAL px [x, y]) and, with labels, the label's softmax probability."""

    stability_score: float = 0.0
    point: tuple[float, float] = (0.0, 0.0)
    label_score: float | None = None


@dataclass
class Candidates:
    """Masks that passed the filters of step 3, M in all: rles (COCO RLE dicts, ORIGINAL size); boxes (M, 4)
    int64 [x0, y0, x1, y1] inclusive; scores (M,) float32 predicted IoU; stability (M,) float32; points (M, 2)
    float64 ORIGINAL px; cells (M, h, w) uint8 covered low-res cells per patch cell (only with labels)."""

    rles: list[dict] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    stability: list[np.ndarray] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)
    cells: list[np.ndarray] = field(default_factory=list)

    def stacked(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype)


def point_grid(points_per_side: int, original_size: tuple[int, int]) -> np.ndarray:
    """(n * n, 2) float64 [x, y] ORIGINAL px, row-major (see step 1)."""
    n = int(points_per_side)
    side = (np.arange(n, dtype=np.float64) + 0.5) / n
    height, width = original_size
    xs, ys = np.meshgrid(side * width, side * height)
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)


def stability_scores(logits: np.ndarray) -> np.ndarray:
    """logits (C, H, W) float32 -> (C,) float32 |logits > 1| / |logits > -1| (NaN when both are empty)."""
    inner = np.count_nonzero(logits > STABILITY_OFFSET, axis=(1, 2))
    outer = np.count_nonzero(logits > -STABILITY_OFFSET, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (inner / outer).astype(np.float32)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """masks (C, H, W) bool -> (C, 4) int64 [x0, y0, x1, y1], inclusive pixel indices; zeros when empty."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    height, width = masks.shape[1:]
    boxes = np.stack(
        [
            cols.argmax(axis=1),
            rows.argmax(axis=1),
            width - 1 - cols[:, ::-1].argmax(axis=1),
            height - 1 - rows[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.int64)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """boxes (M, 4) [x0, y0, x1, y1], scores (M,) -> kept indices, best score first (see step 4)."""
    count = len(boxes)
    if count == 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    rank = np.empty(count, np.float64)
    rank[order] = np.arange(count)
    priority = (count - rank) / count  # in (0, 1]: NMSBoxes wants scores above a threshold >= 0
    sizes = boxes[:, 2:] - boxes[:, :2]
    flat = (sizes <= 0).any(axis=1)
    solid = np.flatnonzero(~flat)
    kept = cv2.dnn.NMSBoxes(
        [[int(v) for v in (*boxes[i, :2], *sizes[i])] for i in solid],
        [float(priority[i]) for i in solid],
        0.0,
        float(threshold),
    )
    keep = np.concatenate([solid[np.asarray(kept, np.int64).reshape(-1)], np.flatnonzero(flat)])
    return keep[np.argsort(rank[keep], kind="stable")]


def _decode_grid(
    heads: Heads, entry: ImageEntry, points: np.ndarray, timings: Timings
) -> tuple[np.ndarray, np.ndarray]:
    """points (K, 2) ORIGINAL px -> (iou (K, 3), low-res logits (K, 3, 4h, 4w)): ONE decoder call."""
    count = len(points)
    coords = np.zeros((count, 2, 2), np.float32)  # each point + SAM's padding point (0, 0) labelled -1
    coords[:, 0] = map_coords(points, entry.original_size, heads.image_size)
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (count, 1))
    grid = heads.mask_grid
    out = heads.decode(
        entry,
        coords,
        labels,
        np.zeros((count, 1, grid, grid), np.float32),
        np.zeros((count,), np.float32),
        timings,
    )
    return out.iou_predictions[:, MULTIMASK], out.low_res_masks[:, MULTIMASK]


def _filter_batch(
    heads: Heads, entry: ImageEntry, points: np.ndarray, params: EverythingParams, found: Candidates,
    with_cells: bool, timings: Timings,
) -> None:  # fmt: skip
    """One decoder call over `points` (K, 2), then step 3; survivors are appended to `found`."""
    iou, low = _decode_grid(heads, entry, points, timings)
    iou, low = iou.reshape(-1), low.reshape(-1, *low.shape[2:])
    pts = np.repeat(points, len(MULTIMASK), axis=0)
    keep = np.flatnonzero(iou > params.pred_iou_thresh) if params.pred_iou_thresh > 0 else np.arange(len(iou))
    height, width = entry.original_size
    step = max(1, UPSCALE_BYTES // (4 * height * width))
    with timings.measure("postprocess"):
        for start in range(0, len(keep), step):
            rows = keep[start : start + step]
            logits = postprocess_masks(low[rows], entry.input_size, entry.original_size, heads.image_size)
            stability = stability_scores(logits)
            ok = stability >= params.stability_score_thresh if params.stability_score_thresh > 0 else None
            if ok is not None:
                rows, logits, stability = rows[ok], logits[ok], stability[ok]
            if len(rows) == 0:
                continue
            masks = logits > 0
            found.rles += mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))
            found.boxes.append(mask_boxes(masks))
            found.scores.append(iou[rows].astype(np.float32))
            found.stability.append(stability)
            found.points.append(pts[rows])
            if with_cells:
                found.cells.append(cell_coverage(low[rows] > 0, heads.mask_grid // 4))


def _results(found: Candidates, keep: np.ndarray) -> list[EverythingMask]:
    scores, stability = found.stacked("scores", (), np.float32), found.stacked("stability", (), np.float32)
    points = found.stacked("points", (2,), np.float64)
    masks = mask_utils.decode([found.rles[i] for i in keep]) if len(keep) else None  # (H, W, N) uint8
    out = []
    for n, i in enumerate(keep):
        score = float(scores[i]) if np.isfinite(scores[i]) else 0.0
        assert masks is not None
        out.append(
            EverythingMask(
                mask=masks[:, :, n].astype(bool),
                score=score,
                iou_prediction=score,
                stability_score=float(stability[i]) if np.isfinite(stability[i]) else 0.0,
                point=(float(points[i, 0]), float(points[i, 1])),
            )
        )
    return out


def segment_everything(
    heads: Heads,
    entry: ImageEntry,
    params: EverythingParams,
    label_embeddings: np.ndarray | None,
    labels: list[str] | None,
    timings: Timings,
    deadline: float = float("inf"),
) -> list[EverythingMask]:
    """See the module docstring. label_embeddings (L, D) float32 L2-normalised rows for `labels`, or None.
    The deadline (time.monotonic()) is checked between decoder calls: past it -> DeadlineExceeded (504)."""
    grid = point_grid(params.points_per_side, entry.original_size)
    found = Candidates()
    with_labels = label_embeddings is not None and bool(labels)
    for start in range(0, len(grid), params.points_per_batch):
        if time.monotonic() > deadline:
            raise DeadlineExceeded("segment-everything passed the request deadline; ask for fewer points")
        batch = grid[start : start + params.points_per_batch]
        _filter_batch(heads, entry, batch, params, found, with_labels, timings)
    scores = found.stacked("scores", (), np.float32)
    with timings.measure("postprocess"):
        keep = box_nms(found.stacked("boxes", (4,), np.int64), scores, params.box_nms_thresh)[
            : params.max_masks
        ]
        results = _results(found, keep)
    if with_labels and results:
        assert label_embeddings is not None and labels is not None
        cells = found.stacked("cells", (heads.mask_grid // 4,) * 2, np.uint8)[keep]
        clip = heads.clip(entry, timings)
        anchors = map_coords(np.array([r.point for r in results]), entry.original_size, heads.image_size)
        best, probs = label_masks(
            cells, anchors, clip.patch_embeddings[0], label_embeddings, heads.logit_scale, heads.image_size
        )
        for result, index, prob in zip(results, best, probs, strict=True):
            result.label, result.label_score = labels[int(index)], float(prob)
    return results
