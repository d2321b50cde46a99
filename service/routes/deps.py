"""FastAPI dependencies (`Annotated` aliases) shared by the routers.

- `StateDep`, `SettingsDep`: per-app state and settings.
- `EngineDep`: the loaded engine, or 503 NotReady (loading, failed load, draining).
- `ContextDep`: the request's timings (rendered as Server-Timing) and deadline (time.monotonic() seconds).
- `require_api_key`: optional auth (`Authorization: Bearer KEY` or `X-API-Key: KEY`, constant-time compare).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.engine import Engine
from service.errors import NotReady, Unauthorized
from service.lifecycle import ServiceState
from service.settings import Settings
from service.timing import Timings


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_engine(request: Request, state: StateDep) -> Engine:
    admitted = bool(getattr(request.state, "admitted", False))
    if not state.lifecycle.may_serve(admitted) or state.engine is None:
        raise NotReady(f"not ready: {state.lifecycle.reason}", headers={"Retry-After": "5"})
    return state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


@dataclass
class RequestContext:
    """timings: per-stage milliseconds (Server-Timing); deadline: time.monotonic() after which queued work is
    abandoned (504)."""

    timings: Timings
    deadline: float


def get_context(request: Request, settings: SettingsDep) -> RequestContext:
    timings = getattr(request.state, "timings", None) or Timings()
    started = getattr(request.state, "started", None) or time.monotonic()
    return RequestContext(timings, started + settings.request_timeout_s)


ContextDep = Annotated[RequestContext, Depends(get_context)]


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """401 unless the configured API key is given; no-op when `api_key` is unset."""
    if settings.api_key is None:
        return
    supplied: str | None = None
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        supplied = credentials.strip()
    if supplied is None:
        supplied = request.headers.get("x-api-key")
    expected = settings.api_key.get_secret_value().encode()
    if supplied is None or not hmac.compare_digest(supplied.encode(), expected):
        raise Unauthorized("missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})
