"""GET /healthz (live), GET /readyz (loaded + warm + not draining), GET /info (model, bundle, backend,
weights provenance, settings). /healthz and /readyz never need the API key."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.lifecycle import ServiceState
from service.routes.deps import StateDep, require_api_key
from service.routes.responses import ErrorResponse, HealthResponse, InfoResponse, ReadyResponse

router = APIRouter(tags=["health"])

RANDOM_WARNING = "RANDOM WEIGHTS: this bundle is random-init; outputs are meaningless (development only)"


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process serves HTTP")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: model loaded and warm, not draining",
    responses={
        503: {"model": ReadyResponse, "description": "loading, failed load (with reason) or draining"}
    },
)
async def readyz(state: StateDep) -> JSONResponse:
    lifecycle = state.lifecycle
    body = ReadyResponse(status=lifecycle.phase.value, reason=lifecycle.reason).model_dump()
    return JSONResponse(body, status_code=200 if lifecycle.ready else 503)


def _backend_info(backend: Any) -> dict[str, Any] | None:
    info = getattr(backend, "info", None)
    if info is None:
        return None
    if dataclasses.is_dataclass(info):
        return dataclasses.asdict(info)
    return dict(info) if isinstance(info, dict) else {"name": str(info)}


def build_info(state: ServiceState) -> InfoResponse:
    bundle = state.bundle
    bundle_info = bundle.info() if bundle is not None and hasattr(bundle, "info") else None
    random_init = getattr(bundle, "random_init", None)
    return InfoResponse(
        status=state.lifecycle.phase.value,
        status_reason=state.lifecycle.reason,
        model=getattr(bundle, "model_name", None),
        bundle_path=str(getattr(bundle, "path", state.bundle_path)),
        fingerprint=getattr(bundle, "fingerprint", None),
        random_init=random_init,
        warning=RANDOM_WARNING if random_init else None,
        weights=(bundle_info or {}).get("weights"),
        bundle=bundle_info,
        backend=_backend_info(state.backend),
        settings=state.settings.summary(),
        uptime_s=round(time.time() - state.started_at, 3),
        load_seconds=state.load_seconds,
    )


@router.get(
    "/info",
    response_model=InfoResponse,
    summary="Model, bundle, backend, weights provenance and settings",
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorResponse}},
)
async def info(state: StateDep) -> InfoResponse:
    return build_info(state)
