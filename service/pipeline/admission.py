"""Admission control in front of the expensive per-image work (decode + preprocess + encoder).

Under overload a server must refuse new work FAST and keep the latency of the work it accepted. The HTTP layer
therefore hands the Predictor an `EncodedImage` (raw bytes + sha256, no pixels decoded yet), and:

1. `Predictor.admit(image)` runs right after the body is read: an image already cached or in flight needs no
   new encoder work and is always admitted; any other image takes one encoder-queue slot
   (`Batcher.reserve()`) or gets `QueueFull` (429 + Retry-After) at once, before any decode.
2. `Predictor.get_entry` then decodes and preprocesses inside a `DecodeGate` slot: at most
   `max_concurrent_decodes` images are decoded/preprocessed at a time (the rest wait, still holding their
   queue slot, so waiting requests count against the queue budget), and the reserved slot becomes the
   queued job.
3. A request that ends early (bad image, validation error, deadline, client disconnect = task cancelled) gives
   its slot and its reservation back; nothing admitted is dropped silently: it gets its result or an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from service.errors import DeadlineExceeded
from service.runtime.cpus import available_cpus

HASH_IN_THREAD_BYTES = 1 << 20
"""Bodies at least this large are hashed in a worker thread (hashlib releases the GIL)."""


@dataclass
class EncodedImage:
    """An uploaded image whose pixels are not decoded yet. data: the raw request bytes; sha256: hex digest of
    them (the cache key and public image_id); reservation: the encoder-queue slot taken by
    `Predictor.admit` (a `service.runtime.batcher.Reservation`), None when none is needed (cached / in
    flight) or not admitted yet."""

    data: bytes = field(repr=False)
    sha256: str
    reservation: Any = None

    def release(self) -> None:
        """Give an unused reservation back (idempotent); called when the request ends."""
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None


async def sha256_hex(data: bytes) -> str:
    """sha256 hex of `data`; large bodies are hashed off the event loop."""
    if len(data) >= HASH_IN_THREAD_BYTES:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


def decode_slots(settings: Any) -> int:
    """`settings.max_concurrent_decodes`, 0 (or absent) = the CPUs this process may use."""
    requested = int(getattr(settings, "max_concurrent_decodes", 0) or 0)
    return requested if requested > 0 else available_cpus()


class DecodeGate:
    """A FIFO semaphore of `slots` for decode + preprocess work, with counters for metrics and tests:
    `active` (holding a slot), `waiting` (queued for one), `max_active` (high-water mark)."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, int(slots))
        self._sem = asyncio.Semaphore(self.slots)
        self.active = 0
        self.waiting = 0
        self.max_active = 0

    @asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold one slot for the block. DeadlineExceeded (504) when `deadline` (time.monotonic()) passes while
        waiting; cancellation (client gone) while waiting leaves no trace."""
        self.waiting += 1
        try:
            await asyncio.wait_for(self._sem.acquire(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceeded("request deadline passed while waiting to decode the image") from None
        finally:
            self.waiting -= 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            yield
        finally:
            self.active -= 1
            self._sem.release()
