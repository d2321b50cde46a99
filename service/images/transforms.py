"""SAM preprocessing and mask postprocessing in numpy / Pillow / OpenCV (no torch), matching segment_anything.

Frames and conventions
- ORIGINAL frame: the decoded image, (H, W), pixel coordinates [x, y] with x along W.
- INPUT frame: the image resized so its longest side is S (`preprocess_shape`), (new_h, new_w), then padded at
  the bottom/right with zeros to S x S. Prompt coordinates given to the decoder live in this frame (0..S).
- LOW-RES frame: the decoder's mask logits, (4h, 4w) = (S/4, S/4) covering the padded S x S input frame.

Equivalences (verified in tests/service/pipeline/test_transforms.py against segment_anything on torch):
- `resize_longest_side` == `ResizeLongestSide.apply_image` (torchvision's PIL path: `PIL.Image.resize`,
  BILINEAR, on uint8) pixel for pixel.
- `preprocess` == `Sam.preprocess` ((x - mean) / std in float32, zero pad bottom/right) bit for bit.
- `postprocess_masks` == `Sam.postprocess_masks` (bilinear, align_corners=False, to S x S -> crop -> bilinear
  to (H, W)) using `cv2.resize(..., INTER_LINEAR)` on float32, which samples at the same half-pixel centres.

Decisions at original size, straight to the layout COCO RLE reads (the fast path; `postprocess_masks` + `> 0`
/ argmax is the plain one, and tests/service/images/test_transforms.py compares them):
- `upscale_to_input` does the first resize only over the rows/columns the crop keeps (same values);
- `upscale_to_input(..., transposed=True)` resizes the transposed low-res block (the same values, transposed: no
  full-size transpose is made) and `upsample_decision_t` resizes the last step (input frame -> original) of
  those TRANSPOSED maps, so the decision comes out as (H, W) in Fortran order (column-major, COCO RLE's order:
  encoded without another pass): one map (a SAM mask, or text vs one background prompt as their difference) in
  one OpenCV call and `> 0` (OpenCV's compare: `positive`), one (H, W) float map at a time. Several maps
  (several texts): the per-pixel first argmax; when the argmax changes between few neighbouring source samples
  (smooth maps), as two 1-D passes that resample only the pixels between samples that disagree (bilinear
  weights are non-negative and shared by every map, so a pixel whose two source samples carry the same decision
  keeps it): work beyond the output then scales with the length of the boundaries, not with the image.
  Both may differ from the plain path only where a value is within float32 rounding of the decision threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image


def preprocess_shape(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(new_h, new_w) after resizing the longest side to image_size (SAM's rounding: int(v * scale + 0.5))."""
    scale = image_size * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """rgb (H, W, 3) uint8 -> (new_h, new_w, 3) uint8, PIL bilinear (as ResizeLongestSide.apply_image)."""
    new_h, new_w = preprocess_shape(rgb.shape[0], rgb.shape[1], image_size)
    if (new_h, new_w) == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))


def normalize_pad(
    resized: np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """resized (new_h, new_w, 3) uint8 -> (3, S, S) float32: (x - mean) / std, zero padded bottom/right.

    One channel at a time, written in place into the output (float32 subtract then divide, the same values as
    the whole-array expression; 1024 px: ~3 ms instead of ~18 ms)."""
    out = np.zeros((3, image_size, image_size), dtype=np.float32)
    height, width = resized.shape[:2]
    for c in range(3):
        dst = out[c, :height, :width]
        np.subtract(resized[:, :, c], np.float32(mean[c]), out=dst, dtype=np.float32)
        np.divide(dst, np.float32(std[c]), out=dst)
    return out


def preprocess(
    rgb: np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, tuple[int, int]]:
    """rgb (H, W, 3) uint8 -> ((3, S, S) float32 normalised + padded, (new_h, new_w) input size)."""
    resized = resize_longest_side(rgb, image_size)
    return normalize_pad(resized, image_size, mean, std), (resized.shape[0], resized.shape[1])


def map_coords(coords: np.ndarray, original_size: tuple[int, int], image_size: int) -> np.ndarray:
    """coords (..., 2) [x, y] in ORIGINAL px -> same shape float32 in the INPUT frame (scale new/old per axis,
    computed in float64 then cast, as SamPredictor does)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, image_size)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    return out.astype(np.float32)


def map_boxes(boxes: np.ndarray, original_size: tuple[int, int], image_size: int) -> np.ndarray:
    """boxes (B, 4) [x0, y0, x1, y1] ORIGINAL px -> (B, 4) float32 INPUT frame."""
    pts = map_coords(np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2), original_size, image_size)
    return pts.reshape(-1, 4)


def unmap_coords(coords: np.ndarray, original_size: tuple[int, int], image_size: int) -> np.ndarray:
    """Inverse of map_coords: (..., 2) INPUT-frame [x, y] -> float64 ORIGINAL px."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, image_size)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] * (old_w / new_w)
    out[..., 1] = out[..., 1] * (old_h / new_h)
    return out


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """maps (C, h, w) float32 -> (C, H, W) float32, bilinear with half-pixel centres and edge clamping
    (== torch F.interpolate(mode="bilinear", align_corners=False, antialias=False)). size = (H, W)."""
    channels, h, w = maps.shape
    if (h, w) == tuple(size):
        return maps.astype(np.float32, copy=True)
    if channels == 1:  # one 2-D call, no channel-last copies
        one = np.ascontiguousarray(maps[0], dtype=np.float32)
        return cv2.resize(one, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)[None]
    out = np.empty((channels, size[0], size[1]), dtype=np.float32)
    for start in range(0, channels, 4):  # OpenCV resizes up to 4 channels per call efficiently
        chunk = np.ascontiguousarray(maps[start : start + 4].transpose(1, 2, 0), dtype=np.float32)
        resized = cv2.resize(chunk, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        if resized.ndim == 2:
            resized = resized[:, :, None]
        out[start : start + 4] = resized.transpose(2, 0, 1)
    return out


def postprocess_masks(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
) -> np.ndarray:
    """low_res (C, 4h, 4w) float32 logits -> (C, H, W) float32 logits at ORIGINAL size:
    bilinear to (S, S), crop [:new_h, :new_w], bilinear to original (H, W). Threshold with `> 0`."""
    full = resize_bilinear(low_res, (image_size, image_size))
    cropped = full[:, : input_size[0], : input_size[1]]
    return resize_bilinear(cropped, original_size)


# --- fast path: decisions at original size (module docstring) ----------------------------------------------
@dataclass(frozen=True)
class LinearAxis:
    """1-D bilinear resampling of n_in samples to n_out (half-pixel centres, edge clamping, as cv2 / torch):
    out[i] = (1 - w[i]) * src[lo[i]] + w[i] * src[hi[i]]. lo, hi: (n_out,) int64; w: (n_out,) float32."""

    lo: np.ndarray
    hi: np.ndarray
    w: np.ndarray

    @classmethod
    def of(cls, n_in: int, n_out: int) -> LinearAxis:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return cls(lo, hi, np.where(hi > lo, src - lo, 0.0).astype(np.float32))

    def at(self, maps: np.ndarray, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """maps (C, A, n_in): resampled values at (rows, idx) pairs of (A, n_out) -> (C, len(rows)) float32."""
        flat = maps.reshape(len(maps), -1)
        base = rows * maps.shape[2]
        w = self.w[idx]
        lo = np.take(flat, base + self.lo[idx], axis=1)
        return lo + w * (np.take(flat, base + self.hi[idx], axis=1) - lo)


def kept_grid(grid: int, input_size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """(rows, columns) of a (g, g) map over the padded S x S input that the crop to input_size reads when
    resized: the ones it covers, plus one (so edge clamping never differs), at most g."""
    rows, cols = (min(grid, -(-size * grid // image_size) + 1) for size in input_size)
    return rows, cols


def upscale_to_input(
    maps: np.ndarray, input_size: tuple[int, int], image_size: int, transposed: bool = False
) -> np.ndarray:
    """maps (C, g, g) over the padded S x S input -> (C, new_h, new_w) float32 == resize_bilinear to (S, S)
    cropped to input_size, resizing only the source rows / columns the crop reads (one more than it needs, so
    edge clamping never differs). transposed: the same values as (C, new_w, new_h) (each map transposed),
    resized from the transposed low-res block, so no full-size transpose is ever made (upsample_decision_t)."""
    grid = maps.shape[-1]
    keep = list(kept_grid(grid, input_size, image_size))
    block, out = maps[:, : keep[0], : keep[1]], list(input_size)
    if transposed:  # bilinear resizing is separable: the transposed block resizes to the transposed maps
        block, keep, out = block.transpose(0, 2, 1), keep[::-1], out[::-1]
    scale = image_size // grid
    full = resize_bilinear(np.ascontiguousarray(block, dtype=np.float32), (keep[0] * scale, keep[1] * scale))
    return full[:, : out[0], : out[1]]


BAND_DENSITY = 0.02  # measured on 12-MP outputs of 3 to 5 maps: above it, resampling every pixel is faster


def decide(values: np.ndarray) -> np.ndarray:
    """The per-pixel decision over C maps, values (C, n) -> (n,): C = 1: `> 0` (bool); C > 1: the FIRST argmax
    (uint8, C <= 255)."""
    if len(values) == 1:
        return values[0] > 0
    return np.argmax(values, axis=0).astype(np.uint8)


def _readers(axis: LinearAxis, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every output index i of `axis` whose first source sample lo[i] is in `samples` (the outputs between
    samples s and s + 1): (position in `samples`, i), both (n,) int64."""
    start = np.searchsorted(axis.lo, samples, "left")
    reps = np.searchsorted(axis.lo, samples, "right") - start
    owner = np.repeat(np.arange(len(samples)), reps)
    return owner, np.repeat(start, reps) + np.arange(len(owner)) - np.repeat(np.cumsum(reps) - reps, reps)


def positive(values: np.ndarray) -> np.ndarray:
    """`values > 0` for a 2-D float32 array, as bool (0/1 bytes), by OpenCV: its compare (255 / 0) runs on every
    core and then keeps the low bit; numpy's `>` takes ~1.6x as long on a 3.4-MP map (0.59 vs 0.37 ms). NaN and
    -0.0 give False, as with `>`."""
    decision = cv2.compare(values, 0.0, cv2.CMP_GT)  # uint8 255 where values > 0, else 0
    return cv2.bitwise_and(decision, 1, dst=decision).view(bool)


def _dense(src: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every pixel resampled: src (C, w, h) transposed maps -> decision (W, H), one (W, H) float map at a time
    (running first argmax over the maps)."""
    height, width = size
    best = cv2.resize(src[0], (height, width), interpolation=cv2.INTER_LINEAR)
    if len(src) == 1:
        return positive(best)
    winner = np.zeros(best.shape, np.uint8)
    for c in range(1, len(src)):
        value = cv2.resize(src[c], (height, width), interpolation=cv2.INTER_LINEAR)
        better = value > best
        np.copyto(winner, np.uint8(c), where=better)
        np.copyto(best, value, where=better)
    return winner


def upsample_decision_t(src: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`decide` of the bilinear resize of maps (C, h, w) float32 to size (H, W), as an (H, W) array in Fortran
    order (a transposed view of a C-contiguous (W, H) array), from the TRANSPOSED maps src (C, w, h) (source
    column k is row k; a strided view is fine). One map: resized in one OpenCV call straight to the transposed
    layout, then `> 0` (`positive`). Several: when their decision changes between fewer than BAND_DENSITY of the
    neighbouring source samples, only the pixels between samples that disagree are resampled (`_banded`); else
    every pixel, one float map at a time (`_dense`)."""
    if len(src) == 1:
        return _dense(src, size).T
    src = np.ascontiguousarray(src, dtype=np.float32)
    labels = decide(src.reshape(len(src), -1)).reshape(src.shape[1:])  # (w, h)
    across = labels[:-1] != labels[1:]  # (w - 1, h): neighbouring source columns that disagree
    if np.count_nonzero(across) > BAND_DENSITY * across.size:
        return _dense(src, size).T
    return _banded(src, labels, across, size).T


def _banded(src: np.ndarray, labels: np.ndarray, across: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Decision (W, H) from the transposed maps src (C, w, h) and their decision `labels` (w, h), resampling
    only where neighbouring samples disagree (`across`: along w; module docstring)."""
    height = size[0]
    ay, ax = LinearAxis.of(src.shape[2], height), LinearAxis.of(src.shape[1], size[1])
    # pass 1, along the height: (w, h) -> (w, H); exact between source rows that disagree
    mid = np.take(labels, ay.lo, axis=1)
    flat = mid.reshape(-1)
    ks, rows = np.nonzero(labels[:, :-1] != labels[:, 1:])
    owner, ys = _readers(ay, rows)
    ks = ks[owner]
    flat[ks * height + ys] = decide(ay.at(src, ks, ys))
    # pass 2, along the width: (w, H) -> (W, H); pairs of columns that may disagree: where the source does,
    # or next to a pixel pass 1 computed
    kk, rows = np.nonzero(across)
    owner, yy = _readers(ay, rows)
    k2, y2 = np.concatenate([kk[owner], ks - 1, ks]), np.concatenate([yy, ys, ys])
    at = k2 * height + y2
    keep = (k2 >= 0) & (k2 < len(labels) - 1)
    keep[keep] = flat[at[keep]] != flat[at[keep] + height]
    owner, xs = _readers(ax, k2[keep])
    k2, y2 = k2[keep][owner], y2[keep][owner]
    out = mid[ax.lo]
    if len(xs):
        below, above = ay.at(src, k2, y2), ay.at(src, k2 + 1, y2)
        out.reshape(-1)[xs * height + y2] = decide(below + ax.w[xs] * (above - below))
    return out


def postprocess_decision(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
) -> np.ndarray:
    """The fast path of `decide(postprocess_masks(...))`: low_res (C, g, g) logits over the padded input ->
    (H, W) decision at ORIGINAL size, Fortran order: for C = 1 the SAM mask `logits > 0`."""
    return upsample_decision_t(
        upscale_to_input(low_res, input_size, image_size, transposed=True), original_size
    )
