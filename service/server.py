"""Run the app under uvicorn with graceful drain.

`DrainingServer` replaces uvicorn's first SIGTERM/SIGINT handling:
1. the app's `Lifecycle` turns to `draining` at once: /readyz answers 503, new inference requests 503;
2. the server keeps listening while in-flight requests finish (`Lifecycle.wait_idle`), at most
   `drain_timeout_s - SHUTDOWN_MARGIN_S` seconds;
3. then uvicorn's own graceful shutdown runs (close listeners, wait `SHUTDOWN_MARGIN_S / 2` for open tasks,
   lifespan shutdown stops the predictor) and the process exits.
A second signal skips the wait (uvicorn's normal shutdown); a third SIGINT forces exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.settings import Settings

log = logging.getLogger("service.server")

SHUTDOWN_MARGIN_S = 2.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_timeout_s = drain_timeout_s
        self.drain_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        lifecycle = self.app.state.service.lifecycle
        if (
            self.should_exit
            or self.drain_task is not None
            or self._loop is None
            or not lifecycle.start_drain()
        ):
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it after shutdown, as it does without drain
        log.info(
            "received %s: draining (%d in flight, up to %.1f s)",
            signal.Signals(sig).name,
            lifecycle.inflight,
            self.drain_timeout_s,
        )
        self.app.state.service.metrics.ready.set(0)
        self._loop.call_soon_threadsafe(self._start_drain_task)

    def _start_drain_task(self) -> None:
        self.drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        lifecycle = self.app.state.service.lifecycle
        wait_s = max(0.1, self.drain_timeout_s - SHUTDOWN_MARGIN_S)
        idle = await lifecycle.wait_idle(wait_s)
        if idle:
            log.info("drained: no request in flight; shutting down")
        else:
            log.warning("drain timeout: %d request(s) still in flight; shutting down", lifecycle.inflight)
        self.should_exit = True


def serve(app: FastAPI, settings: Settings) -> None:
    """Serve `app` in this process (one worker) with graceful drain; returns when the server stopped."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(SHUTDOWN_MARGIN_S / 2)),
        proxy_headers=True,
        server_header=False,
    )
    DrainingServer(config, app, settings.drain_timeout_s).run()
