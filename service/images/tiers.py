"""Embedding cache tiers behind one small interface.

A tier maps an image_id (sha256 hex of the uploaded bytes) to an `ImageEntry` for ONE bundle fingerprint, so a
new bundle never serves stale embeddings. The image store looks tiers up in order (this process's memory, then
an optional shared tier such as Redis) and encodes only when every tier misses; a hit in a later tier fills the
earlier ones. A shared tier that fails or is slow must degrade to a miss, never raise.

`MemoryTier` is the in-process, byte-bounded LRU (thread-safe: the encoder thread stores into it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Protocol

from cachetools import LRUCache

from service.images.entry import ImageEntry


class EmbeddingTier(Protocol):
    """One cache tier. `get` returns None on a miss (or on any failure of the tier)."""

    name: str

    async def get(self, image_id: str) -> ImageEntry | None: ...

    async def put(self, image_id: str, entry: ImageEntry) -> None: ...

    async def close(self) -> None: ...


class MemoryTier:
    """LRU bounded by the sum of `entry.nbytes` (cachetools; entries larger than `max_bytes` are not kept).
    `on_change(total_bytes, entry_bytes)` is called after every insert or re-count (metrics)."""

    name = "memory"

    def __init__(self, max_bytes: int, on_change: Callable[[int, int], None] | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self._on_change = on_change
        self._lock = threading.Lock()
        self._lru: LRUCache[str, ImageEntry] = LRUCache(maxsize=max(1, self.max_bytes), getsizeof=_size)

    @property
    def bytes(self) -> int:
        return int(self._lru.currsize)

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._lru

    def lookup(self, image_id: str) -> ImageEntry | None:
        """The entry (now most recently used) or None."""
        with self._lock:
            return self._lru.get(image_id)

    def store(self, image_id: str, entry: ImageEntry) -> None:
        """Insert or replace (least recently used entries are evicted to stay within max_bytes)."""
        with self._lock:
            self._lru.pop(image_id, None)
            with contextlib.suppress(ValueError):  # larger than the whole tier: not kept
                self._lru[image_id] = entry
        self._changed(entry)

    def recount(self, image_id: str) -> None:
        """Re-read an entry's nbytes after it changed (CLIP outputs memoised), evicting others if needed."""
        with self._lock:
            entry = self._lru.pop(image_id, None)
            if entry is None:
                return
            with contextlib.suppress(ValueError):
                self._lru[image_id] = entry
        self._changed(entry)

    def _changed(self, entry: ImageEntry) -> None:
        if self._on_change is not None:
            self._on_change(self.bytes, entry.nbytes)

    async def get(self, image_id: str) -> ImageEntry | None:
        return self.lookup(image_id)

    async def put(self, image_id: str, entry: ImageEntry) -> None:
        self.store(image_id, entry)

    async def close(self) -> None:
        return None


def _size(entry: ImageEntry) -> int:
    return int(entry.nbytes)
