"""Process lifecycle: loading -> ready -> draining -> stopped, or loading -> failed (live, never ready).

`Lifecycle` is the drain state machine the HTTP layer consults:
- /readyz is 200 only in `ready`;
- inference routes are accepted only in `ready` (503 NotReady otherwise, also while draining);
- the middleware admits requests that arrive while ready as in-flight work (`admit`), so a SIGTERM handler
  can wait for them (`wait_idle`); admitted requests still finish normally while draining.
All methods run on the event loop thread (no locks needed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from service.metrics import Metrics
from service.settings import Settings


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


class Lifecycle:
    """Drain state machine + in-flight request counter."""

    def __init__(self) -> None:
        self.phase = Phase.LOADING
        self.reason = "model is loading"
        self.inflight = 0
        self.drain_started: float | None = None

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def mark_ready(self) -> None:
        if self.phase is Phase.LOADING:
            self.phase, self.reason = Phase.READY, "ready"

    def mark_failed(self, reason: str) -> None:
        if self.phase is Phase.LOADING:
            self.phase, self.reason = Phase.FAILED, reason

    def start_drain(self) -> bool:
        """Stop accepting work. Returns True the first time (the caller then waits for `wait_idle`)."""
        if self.phase in (Phase.DRAINING, Phase.STOPPED):
            return False
        self.phase, self.reason = Phase.DRAINING, "draining: the server is shutting down"
        self.drain_started = time.monotonic()
        return True

    def mark_stopped(self) -> None:
        self.phase, self.reason = Phase.STOPPED, "stopped"

    def admit(self) -> bool:
        """Count a new request as in-flight work if the server is ready now. Requests admitted before a drain
        may still use the engine while draining (so no in-flight request fails); later ones get 503."""
        if self.phase is not Phase.READY:
            return False
        self.inflight += 1
        return True

    def may_serve(self, admitted: bool) -> bool:
        """Whether a request (admitted at its start or not) may run inference now."""
        return self.phase is Phase.READY or (self.phase is Phase.DRAINING and admitted)

    def request_finished(self) -> None:
        self.inflight = max(0, self.inflight - 1)

    async def wait_idle(self, timeout_s: float, poll_s: float = 0.02) -> bool:
        """Wait until no request is in flight or `timeout_s` passed. True when idle."""
        deadline = time.monotonic() + timeout_s
        while self.inflight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True


@dataclass
class ServiceState:
    """Everything the routes need, stored on `app.state.service`."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    engine: Any = None
    bundle: Any = None
    backend: Any = None
    bundle_path: str | None = None
    started_at: float = field(default_factory=time.time)
    load_seconds: float | None = None
    load_task: asyncio.Task | None = None
