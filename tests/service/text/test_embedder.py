"""The text embedder with a slow scripted text tower: cache off still works, the cap on new texts, the deadline
checked between chunks, and other requests served while one request's many new labels are embedded."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.bundle import Bundle
from service.errors import DeadlineExceeded, InvalidInput
from service.settings import Settings
from service.text.embedder import TEXT_BATCH_LABELS, TextEmbedder
from service.text.tokenizer import ClipTokenizer
from service.timing import Timings

pytestmark = pytest.mark.anyio
D = 8


class SlowTextTower:
    """encode_text: `delay_s` per call; row i's embedding is a function of its token ids (deterministic)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.calls, self.rows = delay_s, 0, 0
        self.lock = threading.Lock()

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        with self.lock:
            self.calls += 1
            self.rows += len(ids)
        out = np.stack([np.random.default_rng(int(row.sum())).normal(size=D) for row in ids]).astype(
            np.float32
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def make_embedder(tiny_bundle):
    tokenizer = ClipTokenizer.from_bundle(Bundle.load(tiny_bundle))

    async def factory(delay_s: float = 0.0, **overrides) -> tuple[TextEmbedder, SlowTextTower]:
        tower = SlowTextTower(delay_s)
        embedder = TextEmbedder(tower, tokenizer, Settings(**overrides), ThreadPoolExecutor(1))
        await embedder.start()
        return embedder, tower

    return factory


async def test_cache_off_still_answers_and_cache_on_computes_once(make_embedder) -> None:
    labels = ["cat", "dog", "cat"]
    off, tower = await make_embedder(text_cache_entries=0)
    a = await off.embed(labels, Timings(), time.monotonic() + 30)
    b = await off.embed(labels, Timings(), time.monotonic() + 30)
    assert a.shape == (3, D) and np.array_equal(a, b) and np.array_equal(a[0], a[2])
    assert tower.rows == 2 * 2 * 80, "no cache: each request embeds its 2 distinct labels"
    on, tower = await make_embedder(text_cache_entries=2)
    more = ["cat", "dog", "cow", "ant"]  # more labels than cache entries: must not fail
    first = await on.embed(more, Timings(), time.monotonic() + 30)
    np.testing.assert_array_equal(first[:2], a[:2])
    rows = tower.rows
    await on.embed(["cow", "ant"], Timings(), time.monotonic() + 30)
    assert tower.rows == rows, "the two most recent labels were cached"
    await off.stop()
    await on.stop()


async def test_cap_on_new_texts_is_422_before_any_work(make_embedder) -> None:
    embedder, tower = await make_embedder(max_new_texts=2)
    with pytest.raises(InvalidInput) as info:
        await embedder.embed(["a", "b", "c"], Timings(), time.monotonic() + 30)
    assert info.value.error_type == "too_many_new_texts" and tower.calls == 0
    await embedder.embed(["a", "b"], Timings(), time.monotonic() + 30)
    out = await embedder.embed(["a", "b", "c"], Timings(), time.monotonic() + 30)  # only c is new now
    assert out.shape == (3, D)
    await embedder.stop()


async def test_deadline_between_chunks_and_other_requests_keep_being_served(make_embedder) -> None:
    delay = 0.15
    embedder, tower = await make_embedder(delay_s=delay, max_new_texts=1000)
    many = [f"label {i}" for i in range(10 * TEXT_BATCH_LABELS)]  # 10 calls: 1.5 s of text tower
    start = time.monotonic()
    long = asyncio.ensure_future(embedder.embed(many, Timings(), start + 4 * delay))
    await asyncio.sleep(delay / 2)
    other = await embedder.embed(["a new label"], Timings(), start + 30)
    other_done = time.monotonic() - start
    with pytest.raises(DeadlineExceeded):
        await long
    long_done = time.monotonic() - start
    assert other.shape == (1, D)
    assert other_done < 4 * delay, f"the short request waited {other_done:.2f} s behind the long one"
    assert long_done < 6 * delay, f"504 came {long_done:.2f} s after start, not at its deadline"
    await asyncio.sleep(3 * delay)
    assert tower.calls <= 6, f"{tower.calls} text-tower calls: the expired request's labels kept running"
    await embedder.stop()
