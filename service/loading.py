"""Loading and unloading the model: bundle -> backend -> engine -> warm-up, off the event loop.

Start-up never blocks serving: the app's lifespan runs `load` as a background task; until it finishes
`/healthz` is 200 (live) and `/readyz` 503. A corrupt or mismatched bundle, or a backend that fails to load,
leaves the process live but never ready (/readyz 503 with the reason, inference 503) instead of crashing into a
restart loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from service.lifecycle import ServiceState
from service.metrics import Metrics
from service.server import SHUTDOWN_MARGIN_S
from service.settings import Settings

log = logging.getLogger("service")

BackendFactory = Callable[[Any, Settings, Metrics], Any]
STOP_TIMEOUT_S = SHUTDOWN_MARGIN_S / 2
"""Longest wait at shutdown for queued or running inference (the drain already gave requests their time; the
other half of the margin is uvicorn's own graceful shutdown), so the process exits within the drain timeout."""


def default_backend(bundle: Any, settings: Settings, metrics: Metrics) -> Any:
    """The backend `settings.backend` names (service/runtime), recording per-graph time in `metrics`."""
    from service.runtime.registry import create_backend

    return create_backend(settings.backend, bundle, settings, metrics)


async def load_engine(state: ServiceState, backend_factory: BackendFactory) -> Any:
    """Bundle.load (sha256-verified) -> backend -> Engine -> start (warm-up). Heavy parts run in a thread."""
    from service.bundle import Bundle
    from service.engine import Engine

    settings, metrics = state.settings, state.metrics

    def load_runtime() -> tuple[Any, Any]:
        bundle = Bundle.load(settings.resolved_bundle())
        return bundle, backend_factory(bundle, settings, metrics)

    state.bundle, state.backend = await asyncio.to_thread(load_runtime)
    shared = shared_tier(settings, metrics, state.bundle.fingerprint)
    engine = Engine(state.bundle, state.backend, settings, metrics, shared=shared)
    state.engine = engine
    await engine.start()
    return engine


def shared_tier(settings: Settings, metrics: Metrics, fingerprint: str) -> Any:
    """The shared embedding tier (Redis) when `redis_url` is set, else None."""
    if settings.redis_url is None:
        return None
    from service.images.redis_tier import RedisTier

    return RedisTier(settings, metrics, fingerprint)


async def load(state: ServiceState, backend_factory: BackendFactory) -> None:
    start = time.perf_counter()
    try:
        await load_engine(state, backend_factory)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any load failure: live, not ready, with the reason
        log.exception("model load failed; the server stays live but not ready")
        state.lifecycle.mark_failed(f"model load failed: {type(exc).__name__}: {exc}")
        return
    state.load_seconds = time.perf_counter() - start
    state.lifecycle.mark_ready()
    state.metrics.ready.set(1 if state.lifecycle.ready else 0)
    info = getattr(state.backend, "info", None)
    log.info("ready in %.2f s (bundle %s, backend %s)", state.load_seconds, state.bundle_path, info)
    if state.bundle is not None and getattr(state.bundle, "random_init", False):
        log.warning("RANDOM WEIGHTS: bundle %s is random-init; outputs are meaningless", state.bundle_path)


async def shutdown(state: ServiceState) -> None:
    state.lifecycle.start_drain()
    state.metrics.ready.set(0)
    task = state.load_task
    if task is not None and not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task
    if state.engine is not None:
        try:
            await asyncio.wait_for(state.engine.stop(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "inference still running %.0f s after shutdown began; exiting without it", STOP_TIMEOUT_S
            )
        except Exception:
            log.exception("error while stopping the engine")
    close = getattr(state.backend, "close", None)
    if callable(close):
        with suppress(Exception):
            close()
    state.lifecycle.mark_stopped()
