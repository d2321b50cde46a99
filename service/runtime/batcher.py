"""Dynamic batcher for encoder work (asyncio front, one worker, blocking runs in a thread pool).

- `submit(key, item, deadline)` queues one item; the queue holds at most `queue_size` distinct jobs, beyond
  that `QueueFull` (429) with a `Retry-After` header is raised at once. Retry-After = (queued + reserved
  jobs) x the recent encoder time per image (EWMA of batch time / batch size), at least 1 s.
- Admission before expensive preparation: `reserve()` takes one of the `queue_size` slots NOW (or raises
  `QueueFull`) for a job that will be submitted after decode/preprocess; `submit(..., reservation=r)` turns it
  into the queued job without a second full-check, `r.release()` (idempotent) gives it back unused. Queued +
  reserved jobs never exceed `queue_size`, so an admitted request is never refused later.
- Concurrent submits with the SAME key coalesce: they wait on one job, so the image is encoded once
  (`pending(key)` tells a caller it may pass item=None to join the running/queued job).
- The worker takes the first job, waits until `max_batch_size` jobs are queued or `max_batch_wait_ms` passed
  since that job arrived, then runs up to `max_batch_size` jobs as one call of `run_batch(items)`.
- Deadlines (time.monotonic() seconds): a waiter whose deadline passes while queued gets `DeadlineExceeded`
  (504) at its deadline; a job whose waiters all expired or went away (client disconnect = cancelled
  future) is dropped from the queue and NEVER run.
- `run_batch` must return exactly one result per item; a different count, or any exception, fails only that
  batch's waiters with `InferenceFailed` (or the raised ServiceError); the worker keeps serving.
- metrics (optional): observe_batch(size) per run, set_queue_depth(n) whenever the queue changes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, QueueFull, ServiceError

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """One waiter's share of a batch: value = run_batch's result for its item; times in milliseconds."""

    value: Any
    queued_ms: float
    run_ms: float
    batch_size: int
    coalesced: bool


class Reservation:
    """One queue slot held for a job still being prepared (see `Batcher.reserve`); `release()` is
    idempotent."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher

    @property
    def held(self) -> bool:
        return self._batcher is not None

    def release(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher._reserved = max(0, batcher._reserved - 1)


@dataclass
class _Waiter:
    future: asyncio.Future[BatchResult]
    deadline: float
    coalesced: bool


@dataclass
class _Job:
    key: str
    item: Any
    enqueued: float
    waiters: list[_Waiter] = field(default_factory=list)
    started: bool = False

    def live(self) -> list[_Waiter]:
        return [w for w in self.waiters if not w.future.done()]


class Batcher:
    """See module docstring. run_batch: (list of items) -> sequence of results, called in `executor`."""

    def __init__(
        self,
        run_batch: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_size: int,
        max_batch_wait_ms: float,
        queue_size: int,
        executor: Executor | None = None,
        metrics: Any = None,
        name: str = "encoder",
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait_s = max(0.0, float(max_batch_wait_ms) / 1000.0)
        self.queue_size = max(1, int(queue_size))
        self._executor = executor
        self._metrics = metrics
        self.name = name
        self._queue: collections.deque[_Job] = collections.deque()
        self._jobs: dict[str, _Job] = {}  # queued or running, by key (coalescing)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._image_seconds = 0.05  # EWMA of encoder seconds per image, for Retry-After
        self._reserved = 0  # slots held by `reserve()` for jobs still being prepared

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def reserved(self) -> int:
        """Slots held for admitted jobs not queued yet (waiting for / in decode + preprocess)."""
        return self._reserved

    def record_run(self, seconds: float, images: int = 1) -> None:
        """Feed the per-image time estimate (the worker does this per batch; warm-up may seed it)."""
        per_image = max(0.0, float(seconds)) / max(1, int(images))
        self._image_seconds = 0.8 * self._image_seconds + 0.2 * per_image

    def seed_estimate(self, seconds_per_image: float) -> None:
        """Replace the per-image estimate (e.g. with the warm-up encoder time) before any real batch ran."""
        self._image_seconds = max(0.0, float(seconds_per_image))

    def _full_error(self) -> QueueFull:
        retry = self.retry_after()
        return QueueFull(
            f"{self.name} queue is full ({self.queue_size} admitted); retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )

    def reserve(self) -> Reservation:
        """Hold a queue slot now for a job submitted later; `QueueFull` (429) at once when none is free."""
        if self._task is None or self._stopping:
            raise NotReady(f"{self.name} batcher is not running")
        if len(self._queue) + self._reserved >= self.queue_size:
            raise self._full_error()
        self._reserved += 1
        return Reservation(self)

    def pending(self, key: str) -> bool:
        """True while a job for `key` is queued or running (a submit now would coalesce with it)."""
        return key in self._jobs

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._wakeup = asyncio.Event()
            self._task = asyncio.create_task(self._worker(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Finish queued and running work, then stop the worker."""
        if self._task is None:
            return
        self._stopping = True
        assert self._wakeup is not None
        self._wakeup.set()
        await self._task
        self._task = None

    async def submit(
        self, key: str, item: Any, deadline: float, *, reservation: Reservation | None = None
    ) -> BatchResult:
        """Queue `item` under `key` (or join the pending job for `key`) and wait for its result. With a held
        `reservation` the slot taken at admission is used (no QueueFull); it is consumed either way."""
        reserved = reservation is not None and reservation.held
        if reservation is not None:
            reservation.release()
        if self._task is None or self._stopping:
            raise NotReady(f"{self.name} batcher is not running")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), deadline, coalesced=key in self._jobs)
        job = self._jobs.get(key)
        if job is None:
            if item is None:
                raise InferenceFailed(f"{self.name}: no pending job for {key!r} to join")
            if not reserved and len(self._queue) + self._reserved >= self.queue_size:
                raise self._full_error()
            job = _Job(key=key, item=item, enqueued=time.monotonic())
            self._jobs[key] = job
            self._queue.append(job)
            self._report_depth()
            assert self._wakeup is not None
            self._wakeup.set()
        job.waiters.append(waiter)
        timeout = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(waiter.future, timeout=max(timeout, 0.0))
        except TimeoutError:
            self._forget_if_abandoned(job)
            raise DeadlineExceeded(f"request deadline passed while waiting for the {self.name}") from None
        except asyncio.CancelledError:
            self._forget_if_abandoned(job)
            raise

    def retry_after(self) -> int:
        """Seconds until the admitted work (queued + reserved) has likely drained: that count x the recent
        encoder time per image (at least 1)."""
        pending = max(len(self._queue) + self._reserved, 1)
        return max(1, math.ceil(pending * self._image_seconds))

    def _forget_if_abandoned(self, job: _Job) -> None:
        if not job.started and not job.live() and job in self._queue:
            self._queue.remove(job)
            self._jobs.pop(job.key, None)
            self._report_depth()

    def _report_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.set_queue_depth(len(self._queue))

    async def _next_batch(self) -> list[_Job]:
        """Wait for work, then for a full batch or the first job's max wait; pop up to max_batch_size jobs."""
        assert self._wakeup is not None
        while not self._queue:
            if self._stopping:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        while len(self._queue) < self.max_batch_size and not self._stopping:
            remaining = self._queue[0].enqueued + self.max_wait_s - time.monotonic() if self._queue else 0.0
            if remaining <= 0 or not self._queue:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                break
        jobs = []
        while self._queue and len(jobs) < self.max_batch_size:
            jobs.append(self._queue.popleft())
        self._report_depth()
        return jobs

    def _drop_expired(self, jobs: list[_Job]) -> list[_Job]:
        now = time.monotonic()
        runnable = []
        for job in jobs:
            for w in job.live():
                if w.deadline <= now:
                    w.future.set_exception(
                        DeadlineExceeded(f"request deadline passed in the {self.name} queue")
                    )
            if job.live():
                job.started = True
                runnable.append(job)
            else:
                self._jobs.pop(job.key, None)  # nobody waits: never run
        return runnable

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            if not jobs:
                if self._stopping and not self._queue:
                    return
                continue
            jobs = self._drop_expired(jobs)
            if not jobs:
                continue
            await self._run(loop, jobs)

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        start = time.monotonic()
        if self._metrics is not None:
            self._metrics.observe_batch(len(jobs))
        error: BaseException | None = None
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, [j.item for j in jobs])
            if len(results) != len(jobs):
                error = InferenceFailed(
                    f"{self.name} returned {len(results)} results for a batch of {len(jobs)}"
                )
        except ServiceError as exc:
            error = exc
        except Exception as exc:  # one failing batch fails only its requests
            log.exception("%s batch of %d failed", self.name, len(jobs))
            error = InferenceFailed(f"{self.name} inference failed: {type(exc).__name__}: {exc}")
        run_s = time.monotonic() - start
        if error is None:
            self.record_run(run_s, len(jobs))
        for i, job in enumerate(jobs):
            self._jobs.pop(job.key, None)
            for w in job.live():
                if error is not None:
                    w.future.set_exception(error)
                else:
                    queued_ms = max(0.0, (start - job.enqueued) * 1000.0)
                    w.future.set_result(
                        BatchResult(results[i], queued_ms, run_s * 1000.0, len(jobs), w.coalesced)
                    )
