"""Byte-bounded embedding LRU and the text LRU."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from service.cache import EmbeddingCache, LRUCache


@dataclass
class Entry:
    nbytes: int


class Counters:
    def __init__(self) -> None:
        self.hits = self.misses = 0
        self.bytes = -1

    def cache_hit(self) -> None:
        self.hits += 1

    def cache_miss(self) -> None:
        self.misses += 1

    def set_cache_bytes(self, n: int) -> None:
        self.bytes = n


def test_lru_eviction_by_bytes_and_metrics() -> None:
    m = Counters()
    cache = EmbeddingCache(max_bytes=100, fingerprint="fp", metrics=m)
    cache.put("a", Entry(40))
    cache.put("b", Entry(40))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", Entry(40))  # evicts b (least recent)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.bytes == 80 and m.bytes == 80
    assert cache.get("b") is None
    assert (m.hits, m.misses) == (1, 1)
    cache.put("huge", Entry(1000))  # larger than the whole cache: not stored
    assert "huge" not in cache and cache.bytes == 80


def test_replace_and_refresh_size() -> None:
    cache = EmbeddingCache(max_bytes=100, fingerprint="fp")
    e = Entry(30)
    cache.put("a", e)
    cache.put("a", Entry(50))
    assert cache.bytes == 50 and len(cache) == 1
    cache.put("b", Entry(40))
    grown = cache.get("b")
    grown.nbytes = 70  # e.g. memoised CLIP outputs added
    cache.refresh_size("b")
    assert cache.bytes == 70 and "a" not in cache


def test_fingerprint_is_part_of_the_key() -> None:
    cache = EmbeddingCache(max_bytes=100, fingerprint="v1")
    cache.put("img", Entry(1))
    other = EmbeddingCache(max_bytes=100, fingerprint="v2")
    other._entries = cache._entries  # same storage, different bundle
    assert other.get("img") is None and cache.get("img") is not None


def test_thread_safety_keeps_byte_count_consistent() -> None:
    cache = EmbeddingCache(max_bytes=1000, fingerprint="fp")

    def work(tid: int) -> None:
        for i in range(500):
            cache.put(f"{tid}-{i % 50}", Entry(7))
            cache.get(f"{(tid + 1) % 4}-{i % 50}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.bytes == 7 * len(cache) <= 1000


def test_text_lru() -> None:
    lru: LRUCache[int] = LRUCache(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and len(lru) == 2
    off: LRUCache[int] = LRUCache(0)
    off.put("x", 1)
    assert off.get("x") is None
