"""Test images generated in code (no image files in the repo): small synthetic drawings and real-size photos.

- `make_image(seed)`: a few filled shapes (ellipses, rectangles, polygons) in random colours on a smooth gradient,
  sizes around `base_size` (default 640x480). Cheap; every seed is a different image.
- `make_photo(seed, (W, H))`: a photo-sized (3-12 MP) JPEG with photo-like statistics: a 1/f ("pink") luminance
  field summed over octaves, low-frequency colour casts, soft-edged shaded objects, a vignette and per-pixel
  sensor noise, so its JPEG size (~0.3-0.5 byte/pixel at quality 90) and decode cost resemble a phone photo's.
  `photo(seed, size)` makes one once and caches it on disk (`photo_dir()`); later calls read the file.
- `unique_jpeg(base, count)`: `base` with a JPEG comment segment naming `count`, so the bytes (and their sha256,
  the server's `image_id`) are new without decoding or re-encoding anything.
- `image_id(data)`: lowercase hex sha256 of the bytes, the `image_id` the server returns and the value of the
  `X-Image-Id` routing header.

Arrays: images are (H, W, 3) uint8 RGB; noise fields are (H, W) float32, zero mean, unit standard deviation.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PHOTO_VERSION = 1  # bump when make_photo changes, so cached files are regenerated
DEFAULT_PHOTO_SIZES = ((2000, 1500), (3264, 2448), (4000, 3000))  # 3.0, 8.0 and 12.0 megapixels


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


def octave_noise(
    rng: np.random.Generator, size: tuple[int, int], cells: tuple[int, ...], exponent: float = 0.9
) -> np.ndarray:
    """(H, W) float32 noise, zero mean and unit std: white noise on grids of `cell` pixels (for each cell in
    `cells`), bicubically upsampled to (W, H) = size and weighted by cell**exponent (a 1/f-like spectrum)."""
    width, height = size
    total = np.zeros((height, width), np.float32)
    for cell in cells:
        grid = rng.standard_normal((height // cell + 2, width // cell + 2), dtype=np.float32)
        layer = Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BICUBIC)
        total += np.asarray(layer, np.float32) * np.float32(cell**exponent)
    total -= total.mean()
    total /= max(float(total.std()), 1e-6)
    return total


def _objects_layer(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Soft-edged, shaded objects at 1/8 resolution, upsampled: (alpha (H, W) float32 in 0..1,
    colour (H, W, 3) float32 in 0..255)."""
    width, height = size
    small = (max(8, width // 8), max(8, height // 8))
    alpha = Image.new("L", small, 0)
    colour = Image.new("RGB", small, (0, 0, 0))
    draw_a, draw_c = ImageDraw.Draw(alpha), ImageDraw.Draw(colour)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(0.05, 0.95) * small[0], rng.uniform(0.2, 0.95) * small[1]
        rx, ry = rng.uniform(0.04, 0.2) * small[0], rng.uniform(0.04, 0.25) * small[1]
        draw_c.ellipse(  # drawn 20% larger than the alpha: the soft rim takes the object's colour
            (cx - 1.2 * rx, cy - 1.2 * ry, cx + 1.2 * rx, cy + 1.2 * ry),
            fill=tuple(int(c) for c in rng.integers(20, 235, size=3)),
        )
        draw_a.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    blur = ImageFilter.GaussianBlur(radius=0.6)
    alpha_full = np.asarray(alpha.filter(blur).resize(size, Image.Resampling.BICUBIC), np.float32) / 255.0
    colour_full = np.asarray(colour.resize(size, Image.Resampling.NEAREST), np.float32)
    return np.clip(alpha_full, 0.0, 1.0), colour_full


def make_photo(seed: int, size: tuple[int, int], quality: int = 90) -> bytes:
    """JPEG bytes of a photo-like (W, H) = size RGB image for `seed` (deterministic for a given numpy)."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]  # (H, 1) 0 at the top
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]  # (1, W)
    sky, ground = rng.uniform(90, 220, size=3), rng.uniform(30, 150, size=3)
    horizon = rng.uniform(0.3, 0.6)
    blend = 1.0 / (1.0 + np.exp(-(yy - horizon) * 25.0))  # (H, 1) 0 = sky, 1 = ground
    base = sky * (1 - blend[..., None]) + ground * blend[..., None]  # (H, 1, 3)
    detail = octave_noise(
        rng, size, (1, 2, 4, 8, 16, 32, 64, 128, 256), exponent=0.45
    )  # (H, W) texture, 1/f-like
    casts = np.stack([octave_noise(rng, size, (128, 256, 512)) for _ in range(3)], axis=-1)  # (H, W, 3)
    texture = 1.0 + (0.08 + 0.22 * blend[..., None]) * detail[..., None]  # sky smoother than ground
    fine = octave_noise(rng, size, (1, 2, 3), exponent=0.5)  # (H, W) grain: foliage, fabric, gravel
    image = base * texture + 12.0 * casts + (6.0 + 10.0 * blend[..., None]) * fine[..., None]  # (H, W, 3)
    alpha, colour = _objects_layer(rng, size)
    shade = 1.0 + 0.25 * detail[..., None] - 0.3 * (yy[..., None] - 0.5)
    image = image * (1 - alpha[..., None]) + colour * shade * alpha[..., None]
    vignette = 1.0 - 0.35 * (xx**2 + ((yy - 0.5) * 2) ** 2) / 2  # (H, W)
    image *= vignette[..., None]
    image += rng.normal(0.0, 2.5, size=image.shape).astype(np.float32)  # sensor noise
    pixels = np.clip(image, 0, 255).astype(np.uint8)  # (H, W, 3) uint8 RGB
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def photo_dir() -> Path:
    """Where generated photos are cached: $SAMCLIP_LT_PHOTO_DIR, else $XDG_CACHE_HOME (or ~/.cache)
    /samclip-loadtests/photos."""
    explicit = os.environ.get("SAMCLIP_LT_PHOTO_DIR")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "samclip-loadtests" / "photos"


def photo(seed: int, size: tuple[int, int], quality: int = 90, directory: Path | None = None) -> bytes:
    """`make_photo(seed, size, quality)`, generated once and cached as a file (written to a temporary name,
    then renamed: concurrent processes never read a partial file)."""
    folder = directory or photo_dir()
    path = folder / f"photo-v{PHOTO_VERSION}-s{seed}-{size[0]}x{size[1]}-q{quality}.jpg"
    if path.is_file():
        return path.read_bytes()
    data = make_photo(seed, size, quality)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".photo-", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return data


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'2000x1500,4000x3000' -> [(2000, 1500), (4000, 3000)] as (W, H)."""
    sizes = []
    for item in text.split(","):
        if item.strip():
            width, height = item.lower().strip().split("x")
            sizes.append((int(width), int(height)))
    return sizes


def photo_sizes_from_env() -> list[tuple[int, int]]:
    """Photo sizes from $SAMCLIP_LT_PHOTO_SIZES ('WxH,WxH'), default DEFAULT_PHOTO_SIZES (3, 8, 12 MP)."""
    return parse_sizes(os.environ.get("SAMCLIP_LT_PHOTO_SIZES", "")) or list(DEFAULT_PHOTO_SIZES)


def unique_jpeg(base: bytes, count: int) -> bytes:
    """`base` (a JPEG) with a comment (COM) segment 'samclip-loadtest <count>' right after the SOI marker:
    the same pixels, new bytes and a new sha256."""
    comment = f"samclip-loadtest {count}".encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]


def image_id(data: bytes) -> str:
    """Lowercase hex sha256 of the image bytes: the server's `image_id` and the `X-Image-Id` header value."""
    return hashlib.sha256(data).hexdigest()


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size
