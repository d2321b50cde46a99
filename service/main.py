"""The FastAPI application: `create_app(settings) -> FastAPI`.

The lifespan loads the model in the background (service/loading.py): live at once, ready after warm-up.

Data flow of a request (service/PIPELINE.md): middleware (request id, body limit, timings) -> route
(service/routes/*: ONE request model filled from query, form or JSON) -> image store (service/images: admission,
decode, cache tiers, batched encoder) -> text embedder (service/text) -> task (service/tasks: a plain function
over the cached entry) -> renderer (service/render.py) -> response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError
from service.lifecycle import ServiceState
from service.loading import BackendFactory, default_backend, load, shutdown
from service.logging import install_record_factory
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware, error_body
from service.routes import build_routers
from service.routes.responses import ErrorResponse
from service.settings import Settings

log = logging.getLogger("service")

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


def create_app(settings: Settings | None = None, *, backend_factory: BackendFactory | None = None) -> FastAPI:
    """Build the app. `backend_factory(bundle, settings, metrics)` returns the Backend to serve with (tests wrap
    a real one); the default creates `settings.backend` (service/runtime)."""
    settings = settings if settings is not None else Settings()
    install_record_factory()
    state = ServiceState(settings=settings, metrics=Metrics())
    state.bundle_path = str(settings.resolved_bundle())
    factory = backend_factory or default_backend

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.load_task = asyncio.create_task(load(state, factory), name="samclip-load")
        try:
            yield
        finally:
            await shutdown(state)

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
    for router in build_routers(settings):
        app.include_router(router)
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
    from service.memory import tune_malloc

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    if settings.malloc_tuning:  # a worker process: before its model and threads
        tune_malloc()
    return create_app(settings)
