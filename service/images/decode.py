"""Uploaded bytes -> RGB uint8 array, safely (Pillow only).

Rules, in order (each rejection is a `ServiceError` that becomes a 4xx JSON response):

1. Zero bytes -> 422. The sha256 of the raw bytes is the image's cache key and its public `image_id`.
2. `Image.open(..., formats=settings.allowed_formats)`: only the listed formats are even tried, so random bytes,
   polyglots and formats we do not serve (PSD, PDF, FITS...) -> 415. Bytes that carry the signature of an
   accepted format (Pillow's own check) but whose header Pillow cannot read (bad PNG CRC, IHDR width 0, a
   truncated JPEG header) -> 422 invalid_image.
3. The header size is checked BEFORE any pixel is decoded: width or height < `MIN_SIDE`, longest side over
   `settings.max_image_side`, aspect ratio over `MAX_ASPECT`, or width*height over `settings.max_image_pixels`
   -> 422. Pillow's own limit (`Image.MAX_IMAGE_PIXELS`, left at Pillow's default) is an outer cap: we check it
   explicitly too (so a warnings filter reset cannot bypass it), Pillow's `DecompressionBombError` -> 422, and
   its `DecompressionBombWarning` is turned into an error for the whole process (a filter installed on import).
4. Pixels are decoded with truncated-image loading OFF (never `LOAD_TRUNCATED_IMAGES`): truncated or corrupt
   data -> 422. Animated images (GIF/WEBP/TIFF/MPO...) -> the first frame only; later frames are never read.
5. EXIF orientation (2-8) is applied with `ImageOps.exif_transpose`, so masks align with what clients see.
   Malformed EXIF is ignored (orientation left as stored) and logged.
6. Every mode becomes RGB deterministically:
   - RGB as is; 1, L, P (opaque), CMYK (Pillow's plain conversion, no ICC), YCbCr, LAB, HSV via `convert("RGB")`.
   - Modes with alpha (RGBA, LA, PA, RGBa, La, P with a transparency entry) are composited over WHITE.
   - 16-bit integer modes (I;16, I;16L, I;16B, I;16N) and 32-bit I (how some plugins load 16-bit grey) are
     treated as 0..65535 and scaled to 8 bit with round(v / 257) after clipping.
   - F (32-bit float) is clipped to 0..255 and rounded (Pillow's own F -> L convention); NaN -> 0.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage, UnsupportedMediaType

log = logging.getLogger(__name__)

MIN_SIDE = 8
"""Smallest accepted width/height in pixels (1x1, 1xN and zero-size images are degenerate)."""
MAX_ASPECT = 100.0
"""Largest accepted long-side / short-side ratio (beyond it the resized short side collapses)."""
_WHITE = (255, 255, 255)

# A decompression-bomb *warning* must never let a bomb through: make it an exception everywhere.
warnings.simplefilter("error", Image.DecompressionBombWarning)


@dataclass
class DecodedImage:
    """rgb: (H, W, 3) uint8, RGB, C-contiguous, EXIF orientation applied; sha256: hex digest of the uploaded
    bytes; width = W, height = H (after orientation); format: Pillow format name (e.g. "JPEG")."""

    rgb: np.ndarray
    sha256: str
    width: int
    height: int
    format: str


def _check_header_size(width: int, height: int, settings: Any) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidImage(f"image is {width}x{height}; each side must be at least {MIN_SIDE} pixels")
    if max(width, height) > settings.max_image_side:
        raise InvalidImage(
            f"image is {width}x{height}; the longest side may be at most {settings.max_image_side} "
            "(SAMCLIP_MAX_IMAGE_SIDE)"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise InvalidImage(f"image is {width}x{height}; aspect ratio above {MAX_ASPECT:g} is not supported")
    if width * height > settings.max_image_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height} pixels; the limit is {settings.max_image_pixels} "
            "(SAMCLIP_MAX_IMAGE_PIXELS)"
        )
    pillow_cap = Image.MAX_IMAGE_PIXELS
    if pillow_cap is not None and width * height > pillow_cap:  # same as Pillow's warning, but not bypassable
        raise InvalidImage(f"image rejected as a decompression bomb: {width * height} pixels > {pillow_cap}")


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as exc:  # malformed EXIF must not fail the request
        log.warning("ignoring malformed EXIF orientation: %s: %s", type(exc).__name__, exc)
        return im
    return out if out is not None else im


def _over_white(im: Image.Image) -> np.ndarray:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB, following the module docstring's rules."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return _over_white(im)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.float64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return _grey_to_rgb(grey)
    if mode == "F":
        values = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0)
        return _grey_to_rgb(np.rint(np.clip(values, 0, 255)).astype(np.uint8))
    return np.asarray(im.convert("RGB"))


def sniff_format(data: bytes, formats: list[str]) -> str | None:
    """The first of `formats` whose Pillow signature check (the plugin's own `_accept`) matches `data`."""
    Image.init()
    prefix = data[:16]
    for name in formats:
        accept = Image.OPEN.get(name, (None, None))[1]
        if accept is not None and accept(prefix):
            return name
    return None


def _open(data: bytes, settings: Any) -> Image.Image:
    formats = [f.upper() for f in settings.allowed_formats]
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        known = sniff_format(data, formats)
        if known is not None:  # the signature of an accepted format, but Pillow cannot read it: corrupt
            raise InvalidImage(f"corrupt {known} file: Pillow cannot read its header") from None
        raise UnsupportedMediaType(f"not an image in an accepted format ({', '.join(formats)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image rejected as a decompression bomb: {exc}") from None
    except Exception as exc:  # corrupt header inside an accepted format
        raise InvalidImage(f"corrupt image header: {type(exc).__name__}: {exc}") from None


def decode_image(data: bytes, settings: Any) -> DecodedImage:
    """Decode uploaded bytes. settings needs allowed_formats, max_image_pixels, max_image_side.

    Raises UnsupportedMediaType (415) or InvalidImage (422); never returns a partially decoded image."""
    if not data:
        raise InvalidImage("empty image body (zero bytes)")
    digest = hashlib.sha256(data).hexdigest()
    im = _open(data, settings)
    try:
        fmt = im.format or "UNKNOWN"
        _check_header_size(*im.size, settings)
        im.load()  # first frame only (never seeks); raises on truncated/corrupt data
        rgb = np.ascontiguousarray(to_rgb(_exif_transpose(im)), dtype=np.uint8)
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image rejected as a decompression bomb: {exc}") from None
    except MemoryError:
        raise InvalidImage("image too large to decode") from None
    except Exception as exc:  # truncated, corrupt, unsupported sub-format
        raise InvalidImage(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    finally:
        im.close()
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidImage(f"decoded image has unexpected shape {rgb.shape}")
    height, width = rgb.shape[:2]
    _check_header_size(width, height, settings)
    return DecodedImage(rgb=rgb, sha256=digest, width=width, height=height, format=fmt)
