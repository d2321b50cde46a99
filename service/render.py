"""Renderers: masks -> COCO RLE (pycocotools), polygons (OpenCV contours), PNG (OpenCV), bbox and area.

All masks are (H, W) bool at ORIGINAL image size, in C or Fortran order (the tasks' fast postprocessing
yields Fortran order, i.e. column-major, COCO RLE's own order); coordinates are pixels [x, y] with x along W.
RLE, bbox and area read a C- or F-contiguous mask in place (a uint8 view, no copy); PNG and polygons need
row-major pixels and transpose an F-ordered mask once.
- RLE: COCO compressed RLE, column-major as pycocotools defines it: {"size": [H, W], "counts": str}.
- Polygon: outer contours only (`cv2.RETR_EXTERNAL`, `CHAIN_APPROX_SIMPLE`), each a flat [x0, y0, x1, y1, ...]
  list of pixel-centre coordinates; holes are not represented and contours of fewer than 3 points (single
  pixels, 1-px lines) are dropped, as COCO polygons need at least 3 vertices. Use RLE or PNG for exact masks.
- PNG: ONE mask per response, 8-bit greyscale, 255 inside the mask, 0 outside; `index` picks it among the masks
  the JSON response would hold, in the same order (an index past them: 404). Headers describe it: X-Mask-Index, X-Mask-Count,
  X-Mask-Score, X-Mask-Bbox (x,y,w,h), X-Mask-Area, X-Mask-Label (percent-encoded), X-Image-Id,
  X-Image-Cached.
- bbox: [x, y, w, h] of the tightest box holding every mask pixel (COCO convention); [0, 0, 0, 0] if empty.
- low_res_logits (with `return_logits`): base64 of a float32 `.npy` (4h, 4w), accepted back as `mask_input`.
A result that holds its mask as runs (`MaskResult.runs`, service/images/runs.py) gives RLE, bbox and area from
them (no bitmap is made); polygons and PNG decode the bitmap once.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from service.errors import NotFound
from service.images.entry import ImageEntry
from service.tasks.prompt import encode_mask_logits
from service.tasks.results import MaskResult

MASK_FORMATS = ("rle", "polygon")


def _uint8(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W) bool -> (C-contiguous uint8 0/1 view of the mask, or of its transpose when the mask is in
    Fortran order; transposed?). A copy only for a mask that is neither C- nor F-contiguous."""
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        return mask.T.view(np.uint8), True
    return np.ascontiguousarray(mask, dtype=bool).view(np.uint8), False


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> {"size": [H, W], "counts": str} (COCO compressed RLE)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=bool).view(np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of encode_rle -> (H, W) bool."""
    counts = rle["counts"]
    coco = {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return mask_utils.decode(coco).astype(bool)


def _row_major(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) uint8 0/1, C-contiguous (a view, or one transpose of an F-ordered mask)."""
    pixels, transposed = _uint8(mask)
    return cv2.transpose(pixels) if transposed else pixels


def encode_polygon(mask: np.ndarray) -> list[list[float]]:
    """(H, W) bool -> list of flat [x0, y0, x1, y1, ...] outer contours (see module docstring)."""
    contours, _ = cv2.findContours(_row_major(mask), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def encode_png(mask: np.ndarray) -> bytes:
    """(H, W) bool -> PNG bytes, 8-bit greyscale, 255 = mask."""
    ok, data = cv2.imencode(".png", _row_major(mask) * np.uint8(255))
    if not ok:  # pragma: no cover - OpenCV always has its PNG codec
        raise RuntimeError("OpenCV could not encode the mask as PNG")
    return data.tobytes()


def mask_bbox(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> [x, y, w, h]; [0, 0, 0, 0] for an empty mask."""
    pixels, transposed = _uint8(mask)
    x, y, w, h = (int(v) for v in cv2.boundingRect(pixels))
    return [y, x, h, w] if transposed else [x, y, w, h]


def mask_area(mask: np.ndarray) -> int:
    """Number of mask pixels."""
    return int(cv2.countNonZero(_uint8(mask)[0]))


def result_rle(result: MaskResult) -> dict[str, Any]:
    """The result's mask as COCO compressed RLE (from its runs when it holds them)."""
    return result.runs.rle() if result.runs is not None else encode_rle(result.mask)


def result_bbox(result: MaskResult) -> list[int]:
    return result.runs.bbox() if result.runs is not None else mask_bbox(result.mask)


def result_area(result: MaskResult) -> int:
    return result.runs.area() if result.runs is not None else mask_area(result.mask)


def mask_to_json(result: MaskResult, fmt: str = "rle", logits: bool = False) -> dict[str, Any]:
    """A MaskResult -> {"segmentation", "bbox", "area", "score", "iou_prediction", "label"} (+ "low_res_logits"
    when `logits`: the encoded low-res logits, or None for masks that have none). fmt: "rle" or "polygon"."""
    if fmt not in MASK_FORMATS:
        raise ValueError(f"unknown mask format {fmt!r}; use one of {MASK_FORMATS}")
    iou = result.iou_prediction
    out = {
        "segmentation": result_rle(result) if fmt == "rle" else encode_polygon(result.mask),
        "bbox": result_bbox(result),
        "area": result_area(result),
        "score": float(result.score),
        "iou_prediction": None if iou is None else float(iou),
        "label": result.label,
    }
    if logits:
        low = result.low_res_logits
        out["low_res_logits"] = None if low is None else encode_mask_logits(low)
    return out


def masks_to_json(results: list[MaskResult], fmt: str, logits: bool = False) -> list[dict[str, Any]]:
    return [mask_to_json(r, fmt, logits) for r in results]


def png(results: list[MaskResult], index: int, entry: ImageEntry) -> tuple[bytes, dict[str, str]]:
    """One mask of `results` as (PNG bytes, headers) (see the module docstring). index past the end -> 422."""
    if index >= len(results):
        raise NotFound(
            f"no mask at index {index}: the response has {len(results)} mask(s)", error_type="no_such_mask"
        )
    result = results[index]
    headers = {
        "X-Mask-Index": str(index),
        "X-Mask-Count": str(len(results)),
        "X-Mask-Score": f"{float(result.score):.6g}",
        "X-Mask-Bbox": ",".join(str(v) for v in result_bbox(result)),
        "X-Mask-Area": str(result_area(result)),
        "X-Image-Id": entry.image_id,
        "X-Image-Cached": "true" if entry.cached else "false",
    }
    if result.label is not None:
        headers["X-Mask-Label"] = quote(result.label)
    return encode_png(result.mask), headers
