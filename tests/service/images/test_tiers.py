"""The in-process embedding tier (byte-bounded LRU) and the entry serialisation a shared tier stores."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.images.entry import ImageEntry, Memo, from_bytes, new_entry, to_bytes
from service.images.tiers import MemoryTier
from service.runtime.base import ClipOutput


def entry(image_id: str, floats: int, tokens: int = 0) -> ImageEntry:
    patch = np.ones((1, 1, 1, tokens), np.float32) if tokens else None
    return ImageEntry(image_id, 8, 6, (6, 8), np.zeros((1, floats), np.float32), Memo(patch_tokens=patch))


def test_lru_eviction_by_bytes_and_change_callback() -> None:
    seen: list[tuple[int, int]] = []
    size = entry("x", 100).nbytes
    tier = MemoryTier(max_bytes=2 * size + 10, on_change=lambda total, one: seen.append((total, one)))
    tier.store("a", entry("a", 100))
    tier.store("b", entry("b", 100))
    assert tier.lookup("a") is not None  # a is now most recent
    tier.store("c", entry("c", 100))  # evicts b (least recent)
    assert "b" not in tier and "a" in tier and "c" in tier
    assert tier.bytes == 2 * size and seen[-1] == (2 * size, size)
    assert tier.lookup("b") is None
    tier.store("huge", entry("huge", 10_000))  # larger than the whole tier: not kept
    assert "huge" not in tier and tier.bytes == 2 * size


def test_replace_and_recount_after_growth() -> None:
    small = entry("a", 10).nbytes
    tier = MemoryTier(max_bytes=3 * small + 300)
    tier.store("a", entry("a", 10))
    tier.store("a", entry("a", 10))
    assert tier.bytes == small and len(tier) == 1
    grown = entry("b", 10)
    tier.store("b", grown)
    grown.memo.patch_tokens = np.ones((1, 1, 1, 100), np.float32)  # e.g. CLIP outputs memoised
    tier.recount("b")
    assert tier.bytes == small + grown.nbytes and grown.nbytes == small + 400
    grown.memo.patch_tokens = np.ones((1, 1, 1, 1000), np.float32)
    tier.recount("b")  # now larger than the tier: dropped, and only `a` is counted
    assert "b" not in tier and tier.bytes == small


def test_zero_bytes_keeps_nothing() -> None:
    tier = MemoryTier(max_bytes=0)
    tier.store("a", entry("a", 1))
    assert tier.lookup("a") is None and tier.bytes == 0


def test_thread_safety_keeps_byte_count_consistent() -> None:
    one = entry("x", 7).nbytes
    tier = MemoryTier(max_bytes=60 * one)

    def work(tid: int) -> None:
        for i in range(500):
            tier.store(f"{tid}-{i % 50}", entry("x", 7))
            tier.lookup(f"{(tid + 1) % 4}-{i % 50}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tier.bytes == one * len(tier) <= 60 * one


@pytest.mark.parametrize("stage", ["tokens", "clip"])
def test_entry_round_trip_keeps_dtype_shape_and_values(stage: str) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(1, 4, 2, 2)).astype(np.float32)
    memo = Memo(patch_tokens=rng.normal(size=(1, 2, 2, 3)).astype(np.float32))
    if stage == "clip":
        clip = ClipOutput(
            rng.normal(size=(1, 5)).astype(np.float16), rng.normal(size=(1, 2, 2, 5)).astype(np.float16)
        )
        memo = Memo(clip=clip)
    original = ImageEntry("ab" * 32, 640, 480, (768, 1024), emb, memo)
    back = from_bytes(original.image_id, to_bytes(original))
    assert (back.width, back.height, back.input_size) == (640, 480, (768, 1024))
    np.testing.assert_array_equal(back.image_embeddings, emb)
    if stage == "clip":
        assert back.memo.patch_tokens is None and back.memo.clip.patch_embeddings.dtype == np.float16
        np.testing.assert_array_equal(back.memo.clip.patch_embeddings, memo.clip.patch_embeddings)
    else:
        assert back.memo.clip is None
        np.testing.assert_array_equal(back.memo.patch_tokens, memo.patch_tokens)
    assert back.nbytes == original.nbytes


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_entries_hold_the_sam_embedding_channels_last(dtype: str) -> None:
    """A new entry and one read back from a shared tier hold the (1, C, h, w) embedding channels-last (the
    fused OpenVINO decoder's input layout: a view, no transpose per call), with the encoder's values."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(1, 8, 3, 5)).astype(np.float32)
    tokens = rng.normal(size=(1, 3, 5, 4)).astype(np.float32)
    fresh = new_entry("cd" * 32, (50, 30), (30, 50), emb, tokens, dtype)
    back = from_bytes(fresh.image_id, to_bytes(fresh))
    for held in (fresh.image_embeddings, back.image_embeddings):
        assert held.shape == emb.shape and held.dtype == np.dtype(dtype)
        assert held.transpose(0, 2, 3, 1).flags.c_contiguous and not held.flags.c_contiguous
        np.testing.assert_array_equal(held, emb.astype(dtype))
    assert fresh.memo.patch_tokens.flags.c_contiguous and back.nbytes == fresh.nbytes


def test_malformed_or_pickled_values_are_refused() -> None:
    import io

    for junk in (b"", b"not an npz", b"PK\x03\x04junk"):
        with pytest.raises(ValueError):
            from_bytes("x", junk)
    buf = io.BytesIO()
    np.savez(buf, meta=np.array([{"evil": 1}], dtype=object), image_embeddings=np.zeros(1))
    with pytest.raises(ValueError):
        from_bytes("x", buf.getvalue())
