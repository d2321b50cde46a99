"""What a request names as its image: uploaded bytes, or the `image_id` of an image encoded earlier.

`image_id` is the lowercase hex sha256 of the uploaded bytes, so a client can compute it before uploading (and
send it as the `X-Image-Id` routing header); the same bytes always give the same id. Nothing is decoded here.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

HASH_IN_THREAD_BYTES = 1 << 20
"""Bodies at least this large are hashed in a worker thread (hashlib releases the GIL)."""


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256 of `data`: the image_id of an upload."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageSource:
    """key: the image_id (sha256 hex); data: the raw uploaded bytes, or None when the request named a cached
    image by id."""

    key: str
    data: bytes | None = field(default=None, repr=False)

    @classmethod
    async def upload(cls, data: bytes) -> ImageSource:
        """An uploaded image; large bodies are hashed off the event loop."""
        if len(data) >= HASH_IN_THREAD_BYTES:
            return cls(await asyncio.to_thread(sha256_hex, data), data)
        return cls(sha256_hex(data), data)

    @classmethod
    def by_id(cls, image_id: str) -> ImageSource:
        return cls(image_id.lower())
