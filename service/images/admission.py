"""The decode gate: at most N images are decoded + preprocessed at a time.

Decoding a 40-MP photo takes hundreds of milliseconds and ~120 MB; without a bound, a burst of uploads would
decode all at once and exhaust memory. The image store takes an encoder-queue slot first (429 at once when the
queue is full, before any decode) and only then waits here, so a waiting request counts against the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from service.errors import DeadlineExceeded


def decode_slots(settings: Any) -> int:
    """`settings.max_concurrent_decodes`, or when 0 the CPUs this process is sized for (`settings.usable_cpus`)."""
    requested = int(settings.max_concurrent_decodes or 0)
    return requested if requested > 0 else settings.usable_cpus()


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
