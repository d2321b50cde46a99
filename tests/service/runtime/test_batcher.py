"""Dynamic batcher: batching under concurrency, 429 when full, 504 never run, coalescing, failure isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.errors import DeadlineExceeded, InferenceFailed, QueueFull
from service.runtime.batcher import Batcher

pytestmark = pytest.mark.anyio


class Recorder:
    """run_batch that records every batch it ran; optional gate to hold the worker busy."""

    def __init__(self, fail_on: str | None = None, wrong_count: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.wrong_count = wrong_count
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[str]) -> list[str]:
        self.gate.wait(5)
        self.batches.append(list(items))
        if self.fail_on in items:
            raise RuntimeError("boom")
        out = [f"out:{i}" for i in items]
        return out[:-1] if self.wrong_count and len(out) > 1 else out


class Metrics:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.depths: list[int] = []

    def observe_batch(self, n: int) -> None:
        self.sizes.append(n)

    def set_queue_depth(self, n: int) -> None:
        self.depths.append(n)


def _batcher(rec: Recorder, **kw) -> Batcher:
    opts = {"max_batch_size": 4, "max_batch_wait_ms": 50, "queue_size": 8}
    opts.update(kw)
    return Batcher(rec, executor=ThreadPoolExecutor(2), **opts)


def _deadline(s: float = 10.0) -> float:
    return time.monotonic() + s


async def _blocked_batcher(**kw) -> tuple[Recorder, Batcher, asyncio.Task]:
    """A started batcher (max_batch_size 1, no batch wait, `kw` overrides) whose worker is blocked inside the
    batch ["busy"] until `rec.gate` is set; returns (rec, batcher, the "busy" submit task)."""
    rec = Recorder()
    rec.gate.clear()
    b = _batcher(rec, max_batch_size=1, max_batch_wait_ms=0, **kw)
    await b.start()
    busy = asyncio.create_task(b.submit("busy", "busy", _deadline()))
    await asyncio.sleep(0.05)  # worker picked "busy" and is blocked
    return rec, b, busy


async def test_concurrent_requests_form_batches_larger_than_one() -> None:
    rec, metrics = Recorder(), Metrics()
    b = _batcher(rec, metrics=metrics)
    await b.start()
    results = await asyncio.gather(*(b.submit(f"k{i}", f"k{i}", _deadline()) for i in range(8)))
    await b.stop()
    assert [r.value for r in results] == [f"out:k{i}" for i in range(8)]
    assert max(len(x) for x in rec.batches) > 1
    assert all(len(x) <= 4 for x in rec.batches)
    assert sorted(sum(rec.batches, [])) == sorted(f"k{i}" for i in range(8))
    assert metrics.sizes == [len(x) for x in rec.batches]
    assert max(r.batch_size for r in results) > 1


async def test_single_request_waits_at_most_max_wait() -> None:
    rec = Recorder()
    b = _batcher(rec, max_batch_wait_ms=20)
    await b.start()
    t0 = time.monotonic()
    res = await b.submit("a", "a", _deadline())
    assert res.value == "out:a" and res.batch_size == 1
    assert time.monotonic() - t0 < 1.0
    await b.stop()


async def test_queue_full_raises_429_with_retry_after() -> None:
    rec, b, first = await _blocked_batcher(queue_size=2)
    queued = [asyncio.create_task(b.submit(f"q{i}", f"q{i}", _deadline())) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as info:
        await b.submit("overflow", "overflow", _deadline())
    assert info.value.status_code == 429
    assert int(info.value.headers["Retry-After"]) >= 1
    rec.gate.set()
    await asyncio.gather(first, *queued)
    await b.stop()
    assert "overflow" not in sum(rec.batches, [])


async def test_expired_request_gets_504_and_never_runs() -> None:
    rec, b, busy = await _blocked_batcher()
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        await b.submit("late", "late", time.monotonic() + 0.1)
    assert info.value.status_code == 504
    assert time.monotonic() - t0 < 1.0  # answered at its deadline, not after the busy batch
    assert b.depth == 0  # its queue slot was freed
    rec.gate.set()
    await busy
    await b.stop()
    assert "late" not in sum(rec.batches, [])


async def test_deadline_already_passed_never_runs() -> None:
    rec = Recorder()
    b = _batcher(rec)
    await b.start()
    with pytest.raises(DeadlineExceeded):
        await b.submit("past", "past", time.monotonic() - 1)
    await asyncio.sleep(0.1)
    await b.stop()
    assert rec.batches == []


async def test_same_key_coalesces_into_one_run() -> None:
    rec = Recorder()
    b = _batcher(rec)
    await b.start()
    results = await asyncio.gather(*(b.submit("same", "same", _deadline()) for _ in range(5)))
    await b.stop()
    assert sum(rec.batches, []) == ["same"]
    assert all(r.value == "out:same" for r in results)
    assert sum(r.coalesced for r in results) == 4


async def test_join_pending_job_without_item() -> None:
    rec = Recorder()
    b = _batcher(rec)
    await b.start()
    first = asyncio.create_task(b.submit("k", "k", _deadline()))
    await asyncio.sleep(0)
    assert b.pending("k")
    joined = await b.submit("k", None, _deadline())
    assert joined.value == "out:k" and (await first).value == "out:k"
    assert not b.pending("k")
    with pytest.raises(InferenceFailed):
        await b.submit("other", None, _deadline())
    await b.stop()


async def test_failing_batch_fails_only_its_requests() -> None:
    rec = Recorder(fail_on="bad")
    b = _batcher(rec, max_batch_size=2, max_batch_wait_ms=30)
    await b.start()
    first = await asyncio.gather(
        b.submit("bad", "bad", _deadline()), b.submit("x", "x", _deadline()), return_exceptions=True
    )
    assert all(isinstance(r, InferenceFailed) for r in first)
    later = await asyncio.gather(b.submit("y", "y", _deadline()), b.submit("z", "z", _deadline()))
    assert [r.value for r in later] == ["out:y", "out:z"]
    await b.stop()


async def test_result_count_mismatch_fails_that_batch() -> None:
    rec = Recorder(wrong_count=True)
    b = _batcher(rec, max_batch_size=3, max_batch_wait_ms=30)
    await b.start()
    res = await asyncio.gather(*(b.submit(k, k, _deadline()) for k in "abc"), return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) and "2 results for a batch of 3" in r.message for r in res)
    single = await b.submit("d", "d", _deadline())  # a batch of one is fine
    assert single.value == "out:d"
    await b.stop()


async def test_cancelled_waiter_frees_job() -> None:
    rec, b, busy = await _blocked_batcher()
    gone = asyncio.create_task(b.submit("gone", "gone", _deadline()))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    rec.gate.set()
    await busy
    await b.stop()
    assert "gone" not in sum(rec.batches, [])
