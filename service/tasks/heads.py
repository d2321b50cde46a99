"""What the tasks run on a cached entry: the CLIP head (memoised per entry), the SAM decoder, and the mask
post-processing to the original size. Blocking calls: tasks run in a worker thread, never on the event loop.
The backend serialises calls per graph itself, so several tasks may call these at once.

Mask post-processing (`masks`), fast path: a mask with few runs (a trained SAM's) comes out as COCO RLE runs
straight from its low-res logits (`mask_runs`, service/images/runs.py: no original-size array at all; the bitmap
is decoded only if a renderer needs it); any other `postprocess_decision` (service/images/transforms.py), which
decides `logits > 0` at original size without original-size float logits: (H, W) bool in Fortran order.
`plain_masks` is the plain path (`postprocess_masks(...) > 0`, == segment_anything's
`Sam.postprocess_masks(...) > 0`), the reference the tests compare the fast one with; setting `postprocess`
"plain" (read from the backend's settings) makes `masks` (and text-segment) use it, e.g. to benchmark both.
Cached arrays may be float16 (setting `cache_dtype`): the CLIP dense features are stored in the dtype of the
entry's patch tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from service.errors import InferenceFailed
from service.images.entry import ImageEntry
from service.images.runs import MaskRuns, mask_runs
from service.images.transforms import postprocess_decision, postprocess_masks
from service.runtime.base import ClipOutput, DecoderOutput, setting
from service.tasks.results import MaskResult
from service.timing import Timings


class Heads:
    """bundle gives image_size (S), embed_grid (h) and logit_scale; `on_update(entry)` is called after an entry
    gained its CLIP outputs (the image store re-counts and re-publishes it)."""

    def __init__(self, bundle: Any, backend: Any, on_update: Callable[[ImageEntry], None]) -> None:
        self.backend = backend
        self.image_size = int(bundle.image_size)
        self.mask_grid = 4 * int(bundle.embed_grid)
        self.logit_scale = float(bundle.logit_scale)
        self.plain = setting(getattr(backend, "settings", None), "postprocess", "fast") == "plain"
        self._on_update = on_update

    def clip(self, entry: ImageEntry, timings: Timings) -> ClipOutput:
        """CLIP outputs of the entry: image_embedding (1, D) float32, patch_embeddings (1, h, w, D) in the cache
        dtype, L2-normalised. Computed once per entry (then the patch tokens, needed by nothing else, are
        dropped)."""
        memo = entry.memo
        if memo.clip is None:
            with timings.measure("head"), memo.lock:
                if memo.clip is None:
                    dtype = memo.patch_tokens.dtype  # the entry's cache dtype
                    out = self.backend.clip_head(memo.patch_tokens)
                    memo.clip = ClipOutput(
                        out.image_embedding, out.patch_embeddings.astype(dtype, copy=False)
                    )
                    memo.patch_tokens = None
                    self._on_update(entry)
        return memo.clip

    def decode(
        self,
        entry: ImageEntry,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
        timings: Timings,
    ) -> DecoderOutput:
        """K prompts in one decoder call. point_coords (K, N, 2) INPUT frame, point_labels (K, N),
        mask_input (K, 1, 4h, 4w), has_mask_input (K,), all float32 -> iou (K, 4), low-res logits (K, 4, 4h, 4w)."""
        with timings.measure("decoder"):
            out = self.backend.decode(
                entry.image_embeddings, point_coords, point_labels, mask_input, has_mask_input
            )
        if len(out.iou_predictions) != len(point_coords):
            raise InferenceFailed(
                f"decoder returned {len(out.iou_predictions)} rows for {len(point_coords)} prompts"
            )
        return out

    def masks(
        self,
        entry: ImageEntry,
        low_res: np.ndarray,
        scores: np.ndarray,
        timings: Timings,
        label: str | None = None,
    ) -> list[MaskResult]:
        """low_res (M, 4h, 4w) logits, scores (M,) predicted IoU -> M masks at ORIGINAL size (logits > 0),
        each as runs or as (H, W) bool in Fortran order (the fast path; see the module docstring)."""
        with timings.measure("postprocess"):
            if self.plain:
                return self.plain_masks(entry, low_res, scores, label)
            masks = [self._mask(entry, logits) for logits in low_res]
            return _results(masks, low_res, scores, label)

    def _mask(self, entry: ImageEntry, logits: np.ndarray) -> np.ndarray | MaskRuns:
        """One mask of the fast path: runs when `mask_runs` applies, else the Fortran-ordered bitmap."""
        args = (entry.input_size, entry.original_size, self.image_size)
        runs = mask_runs(logits, *args)
        return postprocess_decision(logits[None], *args) if runs is None else runs

    def plain_masks(
        self, entry: ImageEntry, low_res: np.ndarray, scores: np.ndarray, label: str | None = None
    ) -> list[MaskResult]:
        """The plain path of `masks`: original-size float logits, then `> 0` (C-ordered masks)."""
        full = postprocess_masks(low_res, entry.input_size, entry.original_size, self.image_size)
        return _results(list(full > 0), low_res, scores, label)


def _results(
    masks: list[np.ndarray | MaskRuns], low_res: np.ndarray, scores: np.ndarray, label: str | None
) -> list[MaskResult]:
    return [
        MaskResult.holding(
            mask,
            score=_finite(scores[m]),
            iou_prediction=_finite(scores[m]),
            label=label,
            low_res_logits=np.array(low_res[m], np.float32),
        )
        for m, mask in enumerate(masks)
    ]


def _finite(value: float) -> float:
    """A JSON-safe float (NaN / inf from a degenerate prompt become 0)."""
    value = float(value)
    return value if np.isfinite(value) else 0.0
