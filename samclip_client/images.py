"""Images as the client sends them: the exact bytes uploaded and their id.

`image_id` is the lowercase hex sha256 of the uploaded bytes, the same id the server gives the image, so the
client knows it before uploading and sends it as the `X-Image-Id` routing header.

Accepted inputs (`as_image`):
- a path (str or os.PathLike): the file's bytes, uploaded unchanged;
- bytes / bytearray / memoryview: an encoded image file (JPEG, PNG, WEBP, ...), uploaded unchanged;
- a PIL image: saved as PNG (lossless);
- a numpy array (H, W) or (H, W, 1|3|4), uint8 (or bool), rows top to bottom: written as PNG (lossless);
- an `ImageData` (from `Client.image(...)`): used as is (prepare once, reuse for many calls).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256 of `data`: the server's `image_id` for an upload of these bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageData:
    """The bytes the client uploads for one image, and their image_id (sha256 hex)."""

    data: bytes = field(repr=False)
    image_id: str = ""

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("empty image: no bytes to upload")
        if not self.image_id:
            object.__setattr__(self, "image_id", sha256_hex(self.data))


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W) or (H, W, C) uint8/bool array, C in 1, 3, 4 -> PNG file bytes (8-bit, no filtering, zlib level
    6). Written with the standard library so that the client needs no imaging library."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 (or bool), got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _PNG_COLOUR_TYPE or 0 in a.shape:
        raise ValueError(f"numpy images must be (H, W) or (H, W, 1|3|4), got shape {a.shape}")
    height, width, channels = a.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), a.reshape(height, width * channels)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPE[channels], 0, 0, 0)
    return b"".join(
        [
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _is_pil_image(obj: Any) -> bool:
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(obj).__mro__)


def as_image(image: Any) -> ImageData:
    """Any accepted input (see the module docstring) -> ImageData. Raises TypeError for other types."""
    if isinstance(image, ImageData):
        return image
    if isinstance(image, bytes | bytearray | memoryview):
        return ImageData(bytes(image))
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as f:
            return ImageData(f.read())
    if isinstance(image, np.ndarray):
        return ImageData(png_bytes(image))
    if _is_pil_image(image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return ImageData(buf.getvalue())
    raise TypeError(
        f"unsupported image type {type(image).__name__}: give a path, bytes, a PIL image, a numpy array "
        "(H, W[, C]) uint8, or an ImageData"
    )
