"""Caches shared by every endpoint: a byte-bounded LRU of image embeddings and a count-bounded LRU for text.

Image cache key = (sha256 hex of the uploaded bytes, bundle fingerprint), so a new bundle never serves stale
embeddings. The `image_id` returned to clients is just the sha256 hex of the uploaded bytes: clients can
compute it themselves, and the same bytes always give the same id (the fingerprint is fixed per server).
Both caches are thread-safe (one lock each); entries are never mutated by the cache itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Generic, Protocol, TypeVar

V = TypeVar("V")


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


E = TypeVar("E", bound=Sized)


class EmbeddingCache(Generic[E]):
    """LRU bounded by the sum of `entry.nbytes`. metrics (optional) gets cache_hit(), cache_miss() and
    set_cache_bytes(n). An entry larger than max_bytes on its own is not stored."""

    def __init__(self, max_bytes: int, fingerprint: str, metrics: Any = None) -> None:
        self.max_bytes = int(max_bytes)
        self.fingerprint = fingerprint
        self._metrics = metrics
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[E, int]] = OrderedDict()
        self._bytes = 0

    def _key(self, image_id: str) -> tuple[str, str]:
        return (image_id, self.fingerprint)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id: str) -> bool:
        return self._key(image_id) in self._entries

    def get(self, image_id: str, *, count: bool = True) -> E | None:
        """The entry (now most recently used) or None. count=False skips the hit/miss metrics."""
        with self._lock:
            item = self._entries.get(self._key(image_id))
            if item is not None:
                self._entries.move_to_end(self._key(image_id))
        if count and self._metrics is not None:
            self._metrics.cache_hit() if item is not None else self._metrics.cache_miss()
        return None if item is None else item[0]

    def put(self, image_id: str, entry: E) -> None:
        """Insert or replace, then evict least recently used entries until within max_bytes."""
        size = int(entry.nbytes)
        with self._lock:
            old = self._entries.pop(self._key(image_id), None)
            if old is not None:
                self._bytes -= old[1]
            if size <= self.max_bytes:
                self._entries[self._key(image_id)] = (entry, size)
                self._bytes += size
            self._evict_locked()
        self._report()

    def refresh_size(self, image_id: str) -> None:
        """Re-read entry.nbytes after the entry grew (e.g. memoised CLIP outputs) and evict if needed."""
        with self._lock:
            item = self._entries.get(self._key(image_id))
            if item is None:
                return
            size = int(item[0].nbytes)
            self._entries[self._key(image_id)] = (item[0], size)
            self._bytes += size - item[1]
            self._evict_locked()
        self._report()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
        self._report()

    def _evict_locked(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.set_cache_bytes(self._bytes)


class LRUCache(Generic[V]):
    """Thread-safe LRU bounded by entry count (text embeddings: key -> (D,) float32)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(0, int(max_entries))
        self._lock = threading.Lock()
        self._data: OrderedDict[Any, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Any) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: V) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
