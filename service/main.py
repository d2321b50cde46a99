"""The FastAPI application: `create_app(settings) -> FastAPI`.

Start-up never blocks serving: the lifespan starts a background task that loads the bundle, creates the
backend, builds the Predictor and warms it up; until then `/healthz` is 200 (live) and `/readyz` 503. A corrupt
or mismatched bundle, or a backend that fails to load, leaves the process live but never ready (/readyz 503
with the reason, inference 503) instead of crashing into a restart loop.

Data flow of a request: middleware (request id, body limit, timings) -> route (service/routes/*) -> deps
(auth, predictor, image input) -> Predictor (decode, cache, batcher, backend) -> postprocess -> response.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError
from service.lifecycle import ServiceState
from service.logging import install_record_factory
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware, error_body
from service.schemas import ErrorResponse
from service.settings import Settings

log = logging.getLogger("service")

PredictorFactory = Callable[[Settings, Metrics], Any]

HTTP_ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    503: "not_ready",
}

DESCRIPTION = """
SAM-CLIP model server: **one encoder pass per image** serves zero-shot classification (`/classify`),
text-prompted segmentation (`/segment?text=dog`), point/box prompted segmentation (`/segment/prompt`) and the
CLIP→SAM refine composition (`/segment/refine?text=dog`).

Images arrive as a raw body (`Content-Type: image/*`), as multipart field `image`, or as an `image_id` returned
by an earlier call (the image embedding is cached: repeat calls skip the encoder).
Masks are COCO RLE by default, `format=polygon`, or a PNG (`format=png` or `Accept: image/png`).
Every error is JSON `{"error", "error_type", "request_id"}`; every response has `X-Request-ID` and `Server-Timing`.
"""


def load_predictor(settings: Settings, metrics: Metrics) -> Any:
    """Default factory: Bundle.load (sha256-verified) -> backend -> Predictor. Heavy parts run in a thread."""
    from service.bundle import Bundle
    from service.pipeline.predictor import Predictor
    from service.runtime.base import create_backend

    async def build() -> Any:
        def load_runtime() -> tuple[Any, Any]:
            bundle = Bundle.load(settings.resolved_bundle())
            return bundle, create_backend(settings.backend, bundle, settings)

        bundle, backend = await asyncio.to_thread(load_runtime)
        return Predictor(bundle, backend, settings, metrics)

    return build()


async def _load(state: ServiceState, factory: PredictorFactory) -> None:
    start = time.perf_counter()
    try:
        predictor = factory(state.settings, state.metrics)
        if inspect.isawaitable(predictor):
            predictor = await predictor
        state.predictor = predictor
        state.bundle = getattr(predictor, "bundle", None)
        state.backend = getattr(predictor, "backend", None)
        await predictor.start()
        if not getattr(predictor, "ready", True):
            raise RuntimeError("predictor.start() returned but the predictor is not ready")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any load failure: live, not ready, with the reason
        log.exception("model load failed; the server stays live but not ready")
        state.lifecycle.mark_failed(f"model load failed: {type(exc).__name__}: {exc}")
        return
    state.load_seconds = time.perf_counter() - start
    state.lifecycle.mark_ready()
    state.metrics.ready.set(1 if state.lifecycle.ready else 0)
    log.info("ready in %.2f s (bundle %s)", state.load_seconds, state.bundle_path)
    if state.bundle is not None and getattr(state.bundle, "random_init", False):
        log.warning("RANDOM WEIGHTS: bundle %s is random-init; outputs are meaningless", state.bundle_path)


async def _shutdown(state: ServiceState) -> None:
    state.lifecycle.start_drain()
    state.metrics.ready.set(0)
    task = state.load_task
    if task is not None and not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task
    if state.predictor is not None:
        try:
            await state.predictor.stop()
        except Exception:
            log.exception("error while stopping the predictor")
    close = getattr(state.backend, "close", None)
    if callable(close):
        with suppress(Exception):
            close()
    state.lifecycle.mark_stopped()


def _install_exception_handlers(app: FastAPI) -> None:
    def rid(request: Request) -> str:
        return getattr(request.state, "request_id", "-")

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.status_code == 500:  # a failed batch: the process keeps serving, but say so
            log.warning("%s: %s", exc.error_type, exc.message)
        body = error_body(exc.message, exc.error_type, rid(request))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        body = error_body("; ".join(parts) or "invalid request", "invalid_input", rid(request))
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        body = error_body(str(exc.detail), error_type, rid(request))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def create_app(
    settings: Settings | None = None, *, predictor_factory: PredictorFactory | None = None
) -> FastAPI:
    """Build the app. `predictor_factory(settings, metrics)` returns a Predictor (or an awaitable of one);
    the default loads `settings.resolved_bundle()` with `settings.backend`."""
    from service.routes import classify, embed, health, metrics, segment

    settings = settings if settings is not None else Settings()
    install_record_factory()
    state = ServiceState(settings=settings, metrics=Metrics())
    state.bundle_path = str(settings.resolved_bundle())
    factory = predictor_factory or load_predictor

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.load_task = asyncio.create_task(_load(state, factory), name="samclip-load")
        try:
            yield
        finally:
            await _shutdown(state)

    app = FastAPI(
        title="samclip-serve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={
            400: {"description": "Bad request", "model": ErrorResponse},
            401: {"description": "Missing or wrong API key", "model": ErrorResponse},
            503: {"description": "Not ready (loading, failed load, or draining)", "model": ErrorResponse},
        },
    )
    app.state.service = state
    _install_exception_handlers(app)
    for module in (health, embed, classify, segment, metrics):
        app.include_router(module.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Server-Timing"],
        )
    app.add_middleware(RequestContextMiddleware, state=state)
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory service.main:app_factory` and worker processes: settings from SAMCLIP_* env,
    logging configured, then `create_app`."""
    from service.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)
