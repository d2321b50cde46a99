"""Dynamic batcher for encoder work (asyncio front, one worker, blocking runs in a thread pool).

- `submit(key, item, deadline)` queues one item; the queue holds at most `queue_size` distinct jobs, beyond that
  `QueueFull` (429) with a `Retry-After` header (seconds, estimated from recent batch times) is raised at once.
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
        self._batch_seconds = 0.05  # EWMA of batch run time, for Retry-After

    @property
    def depth(self) -> int:
        return len(self._queue)

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

    async def submit(self, key: str, item: Any, deadline: float) -> BatchResult:
        if self._task is None or self._stopping:
            raise NotReady(f"{self.name} batcher is not running")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), deadline, coalesced=key in self._jobs)
        job = self._jobs.get(key)
        if job is None:
            if item is None:
                raise InferenceFailed(f"{self.name}: no pending job for {key!r} to join")
            if len(self._queue) >= self.queue_size:
                retry = self.retry_after()
                raise QueueFull(
                    f"{self.name} queue is full ({self.queue_size} waiting); retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
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
        """Seconds until the queue has likely drained (at least 1)."""
        batches = math.ceil(max(len(self._queue), 1) / self.max_batch_size)
        return max(1, math.ceil(batches * (self._batch_seconds + self.max_wait_s)))

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
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * run_s
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
