"""Memory order of the SAM image embedding (B, C, h, w): channels-first, as the graph contract gives it, or
channels-last (a C-contiguous (B, h, w, C) array viewed as (B, C, h, w)), as a cache entry holds it
(service/images/entry.py) and OpenVINO's decoders take it (service/runtime/openvino_decoder.py).

Conversions between the two run OpenCV's 2-D transpose per batch item (16-bit types as uint16): numpy's strided
copy of a ViT-B embedding takes 6.9 ms in float32 (1.1 ms in float16) on 2 cores, OpenCV's 0.6 ms (0.4 ms).
"""

from __future__ import annotations

import cv2
import numpy as np

_SAME_SIZE = {1: np.uint8, 2: np.uint16, 4: np.float32, 8: np.float64}  # element types cv2.transpose moves


def is_channels_last(array: np.ndarray) -> bool:
    """Whether a 4-D array's memory is C-contiguous in (B, h, w, C) order."""
    return array.ndim == 4 and array.transpose(0, 2, 3, 1).flags.c_contiguous


def _transposed(items: np.ndarray) -> np.ndarray:
    """items (B, n, m), each item C-contiguous -> C-contiguous (B, m, n) of the same dtype."""
    kind = _SAME_SIZE[items.dtype.itemsize]
    out = np.empty((items.shape[0], items.shape[2], items.shape[1]), items.dtype)
    for src, dst in zip(items, out, strict=True):
        cv2.transpose(np.ascontiguousarray(src).view(kind), dst.view(kind))
    return out


def to_channels_last(array: np.ndarray, dtype: np.dtype | str | None = None) -> np.ndarray:
    """(B, C, h, w) in either memory order -> C-contiguous (B, h, w, C) in `dtype` (default: the array's); a
    view when the array is held channels-last in that dtype already."""
    dtype = np.dtype(dtype or array.dtype)
    batch, chans, h, w = array.shape
    rows = array.transpose(0, 2, 3, 1)
    if not rows.flags.c_contiguous:
        flat = np.ascontiguousarray(array).reshape(batch, chans, h * w)
        rows = _transposed(flat).reshape(batch, h, w, chans)
    return rows.astype(dtype, copy=False)


def to_channels_first(array: np.ndarray, dtype: np.dtype | str | None = None) -> np.ndarray:
    """(B, C, h, w) in either memory order -> C-contiguous (B, C, h, w) in `dtype` (default: the array's)."""
    dtype = np.dtype(dtype or array.dtype)
    if not array.flags.c_contiguous and is_channels_last(array):
        batch, chans, h, w = array.shape
        rows = array.transpose(0, 2, 3, 1).reshape(batch, h * w, chans)
        array = _transposed(rows).reshape(batch, chans, h, w)
    return np.ascontiguousarray(array, dtype)
