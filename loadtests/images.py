"""Synthetic test images generated in code (no image files in the repo).

`make_image(seed)` draws a few filled shapes (ellipses, rectangles, polygons) in random colours on a smooth
gradient background, so every seed gives a different image (different sha256 -> an encoder cache miss) with
objects a segmenter can outline. Returned as encoded bytes (JPEG or PNG), sizes vary around `base_size`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def make_image(
    seed: int, base_size: tuple[int, int] = (640, 480), fmt: str = "JPEG", jitter: float = 0.25
) -> bytes:
    """Encoded image bytes for `seed`: (W, H) = base_size scaled by up to +-jitter per side."""
    rng = np.random.default_rng(seed)
    scale = 1.0 + rng.uniform(-jitter, jitter, size=2)
    width, height = (max(16, int(base_size[0] * scale[0])), max(16, int(base_size[1] * scale[1])))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    start, end = rng.uniform(0, 255, size=(2, 3))
    t = (xx / width * 0.6 + yy / height * 0.4)[..., None]  # (H, W, 1) in 0..1
    background = (start * (1 - t) + end * t).astype(np.uint8)  # (H, W, 3) uint8 RGB
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(0, 0.7) * width, rng.uniform(0, 0.7) * height
        x1, y1 = x0 + rng.uniform(0.1, 0.3) * width, y0 + rng.uniform(0.1, 0.3) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size
