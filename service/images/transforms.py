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
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """resized (new_h, new_w, 3) uint8 -> (3, S, S) float32: (x - mean) / std, zero padded bottom/right."""
    out = np.zeros((3, image_size, image_size), dtype=np.float32)
    x = resized.astype(np.float32).transpose(2, 0, 1)
    mean32 = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    out[:, : resized.shape[0], : resized.shape[1]] = (x - mean32) / std32
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
