"""A SAM mask as COCO RLE runs straight from its low-res logits: no full-size array is made for the response.

`mask_runs(low_res, input_size, original_size, image_size)` gives the runs of `postprocess_masks(...) > 0` (==
segment_anything's `Sam.postprocess_masks(...) > 0`) at ORIGINAL size (H, W), in COCO's column-major order, with
work that grows with the mask's boundary instead of with H * W:

1. The logits are resized to the INPUT frame (`upscale_to_input`, transposed: one row per input column), then
   along the width only, to (W, new_h): each ORIGINAL column at the input frame's rows (new_h x W values, not
   H x W).
2. Down each column the last resize (new_h -> H, bilinear, half-pixel centres) is linear between neighbouring
   input rows k and k + 1, so the decision `> 0` can only change where their signs differ, and there once: at
   the first output row whose source position passes k + a / (a - b) (a, b: the two values). That row is
   computed per sign change (not per pixel), in float64: it is the row the per-pixel float32 computation
   gives except where a value is within float32 rounding of 0 (tests: no pixel differs, on smooth maps, noise
   and values of 1e-7).
3. The switch positions, plus the columns whose first pixel differs from the previous column's last, are the
   run boundaries; counts are their differences. RLE string, area and bbox come from the counts.

It applies when the last resize enlarges the height (H >= new_h: every input row owns at least one output row)
and the mask has few runs: from the low-res map, an estimate of at most RUN_BUDGET * H * W runs (a trained
SAM's masks: a few thousand runs on a 12-MP photo). A fragmented mask (e.g. a random-init decoder's textures,
~190k runs on 2250 x 1500) costs more per run this way than the per-pixel path, which `mask_runs` leaves to
its caller by returning None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from service.images.transforms import LinearAxis, kept_grid, upscale_to_input
from service.images.transforms import positive as decide_positive  # `positive` names a local below

RUN_BUDGET = 0.01
"""Most runs, as a fraction of the pixels, for the run path. Measured (2250 x 1500, 2 cores): ~1.5 ms + ~47 ns
per run, against ~2.8 ms + ~17 ns per run for resizing every pixel and encoding the bitmap: equal near 43k runs
(1.3 % of the pixels); at 4000 x 3000 (2.6 ms vs 16.6 ms for a smooth mask) far above."""


@dataclass(frozen=True)
class MaskRuns:
    """A binary mask of size (H, W) as COCO RLE counts: counts (n,) uint64, lengths of alternating runs of 0s
    and 1s over the pixels in column-major order (x outer, y inner), starting with 0s (a first count of 0
    when pixel (0, 0) is set); they sum to H * W."""

    size: tuple[int, int]
    counts: np.ndarray

    def _coco(self) -> dict[str, Any]:
        """pycocotools' compressed RLE object of the counts: {"size": [H, W], "counts": bytes}."""
        height, width = self.size
        return mask_utils.frPyObjects({"size": [height, width], "counts": self.counts}, height, width)

    def rle(self) -> dict[str, Any]:
        """{"size": [H, W], "counts": str}: COCO compressed RLE (what pycocotools' encode gives the bitmap)."""
        return {"size": list(self.size), "counts": self._coco()["counts"].decode("ascii")}

    def area(self) -> int:
        """Number of set pixels."""
        return int(self.counts[1::2].sum())

    def bbox(self) -> list[int]:
        """[x, y, w, h] of the set pixels (COCO convention); [0, 0, 0, 0] when none is set."""
        height = self.size[0]
        ends = np.cumsum(self.counts.astype(np.int64))
        lengths = self.counts[1::2].astype(np.int64)
        last = ends[1::2][lengths > 0] - 1  # flat index of each run of 1s' last pixel
        first = last - lengths[lengths > 0] + 1
        if len(first) == 0:
            return [0, 0, 0, 0]
        one_column = first // height == last // height  # a run across columns covers rows 0 and H - 1
        y0 = int(np.min(np.where(one_column, first % height, 0)))
        y1 = int(np.max(np.where(one_column, last % height, height - 1)))
        x0, x1 = int(first[0] // height), int(last[-1] // height)
        return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]

    def inverted(self) -> MaskRuns:
        """The complement mask (every pixel flipped): the same runs, the first run of 0s added or removed."""
        counts = self.counts[1:] if self.counts[0] == 0 else np.concatenate(([0], self.counts))
        return MaskRuns(self.size, counts.astype(np.uint64))

    def decode(self) -> np.ndarray:
        """The mask as (H, W) bool, Fortran order."""
        return mask_utils.decode(self._coco()).view(bool)


def mask_runs(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
) -> MaskRuns | None:
    """low_res (g, g) float32 logits over the padded S x S input -> MaskRuns of the (H, W) mask `logits > 0`,
    or None where the run path does not apply (module docstring: H < new_h, or more runs than RUN_BUDGET)."""
    if original_size[0] < input_size[0] or not few_runs(low_res, input_size, original_size, image_size):
        return None
    return input_map_runs(
        upscale_to_input(low_res[None], input_size, image_size, transposed=True)[0], original_size
    )


def input_map_runs(columns: np.ndarray, original_size: tuple[int, int]) -> MaskRuns | None:
    """columns (new_w, new_h) float32: a map over the INPUT frame, transposed (one row per input column) ->
    MaskRuns of its bilinear resize to (H, W) `> 0`; None when H < new_h (steps 1-3 of the module docstring;
    the caller judges whether the map has few runs: `few_runs`)."""
    height, width = original_size
    rows = columns.shape[1]
    if height < rows:
        return None
    values = cv2.resize(columns, (rows, width), interpolation=cv2.INTER_LINEAR)  # (W, new_h)
    return MaskRuns((height, width), _counts(values, LinearAxis.of(rows, height)))


def few_runs(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
) -> bool:
    """At most RUN_BUDGET * H * W runs in `low_res > 0` resized to the original size, estimated from the sign
    changes down the columns of low_res (g, g) (any grid over the padded S x S input) that the crop keeps (each
    stands for W / kept columns original columns)."""
    rows, cols = kept_grid(low_res.shape[-1], input_size, image_size)
    positive = low_res[:rows, :cols] > 0
    changes = np.count_nonzero(positive[1:] != positive[:-1]) + cols
    return changes * original_size[1] / cols <= RUN_BUDGET * original_size[0] * original_size[1]


def _counts(values: np.ndarray, axis: LinearAxis) -> np.ndarray:
    """values (W, n): each original column at the n input rows; axis: n -> H -> RLE counts (module docstring)."""
    width, n = values.shape
    height = len(axis.lo)
    flat = values.reshape(-1)
    positive = decide_positive(values).reshape(-1)
    at = np.flatnonzero(positive[:-1] != positive[1:])
    xs, ks = np.divmod(at, n)
    inside = ks != n - 1  # pairs within one column
    at, xs, ks = at[inside], xs[inside], ks[inside]
    rows = _switch_rows(flat[at].astype(np.float64), flat[at + 1].astype(np.float64), ks, axis, n)
    switches = xs * height + rows
    first, last = positive[::n], positive[n - 1 :: n]  # each column's first and last pixel
    starts = np.flatnonzero(first != np.concatenate(([False], last[:-1]))) * height
    switches = np.insert(switches, np.searchsorted(switches, starts), starts)
    # a switch on a block's last row + 1 and one on the next block's first row are the same pixel: none
    twice = switches[1:] == switches[:-1]
    if twice.any():
        keep = np.ones(len(switches), bool)
        keep[:-1] &= ~twice
        keep[1:] &= ~twice
        switches = switches[keep]
    return np.diff(switches, prepend=0, append=height * width).astype(np.uint64)


def _switch_rows(a: np.ndarray, b: np.ndarray, ks: np.ndarray, axis: LinearAxis, n: int) -> np.ndarray:
    """The first output row (0..H) from which the decision between input rows k and k + 1 (values a, b of
    opposite decisions, (m,) float64) is b's: in [start of k's rows, start of k + 1's rows]. Output row y samples
    source position (y + 0.5) n / H - 0.5 (clamped at 0: the rows before the first sample are block 0's, w = 0);
    a + w (b - a) > 0 changes where w passes a / (a - b): the switch is the first row past that position."""
    height = len(axis.lo)
    bounds = np.searchsorted(axis.lo, np.arange(n + 1))  # the output rows of input row k: bounds[k]..[k + 1]
    target = ks + a / (a - b)
    rows = np.floor((target + 0.5) * (height / n) - 0.5).astype(np.int64) + 1
    return np.clip(rows, bounds[ks], bounds[ks + 1])
