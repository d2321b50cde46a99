"""Instance crops and object-free backgrounds: how mask-level CLIP targets are formed.

The same recipe serves the demo CLIP teacher's training pairs and the dense (mask-level) CLIP distillation
targets, so the teacher is queried on inputs like those it was trained on.
Images are (3, S, S) uint8 RGB tensors; masks (K, S, S) bool.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from training.sam_ops import mask_boxes


def instance_crops(image: torch.Tensor, masks: torch.Tensor, out: int, margin: float = 0.3) -> torch.Tensor:
    """Square crops around each mask's box, enlarged by `margin` per side, resized to out×out.

    image (3, S, S) uint8, masks (K, S, S) bool -> (K, 3, out, out) uint8 (zero outside the image)."""
    s = image.shape[-1]
    boxes = mask_boxes(masks)
    crops = []
    for x0, y0, x1, y1 in boxes.tolist():
        side = max(x1 - x0, y1 - y0) * (1 + 2 * margin) + 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        a0, b0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        a1, b1 = a0 + int(round(side)), b0 + int(round(side))
        pad = max(0, -a0, -b0, a1 - s, b1 - s)
        padded = F.pad(image, (pad, pad, pad, pad)) if pad else image
        crop = padded[:, b0 + pad : b1 + pad, a0 + pad : a1 + pad]
        crops.append(F.interpolate(crop[None].float(), size=(out, out), mode="bilinear", antialias=True)[0])
    if not crops:
        return torch.zeros(0, 3, out, out, dtype=torch.uint8)
    return torch.stack(crops).round().clamp(0, 255).to(torch.uint8)


def remove_objects(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Inpaint (OpenCV Telea) the union of `masks`, dilated by 3 px: (3, S, S) uint8 -> (3, S, S) uint8."""
    rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    if masks.numel() == 0 or not masks.any():
        return image.clone()
    union = masks.any(0).numpy().astype(np.uint8)
    union = cv2.dilate(union, np.ones((7, 7), np.uint8))
    filled = cv2.inpaint(rgb, union, 5, cv2.INPAINT_TELEA)
    return torch.from_numpy(filled).permute(2, 0, 1).contiguous()


def patch_coverage(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Fraction of each patch covered by each mask: (K, S, S) bool -> (K, grid, grid) float."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]
