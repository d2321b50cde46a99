"""The one HTTP middleware (pure ASGI, so it sees the body stream and every response):

- request id: `X-Request-ID` accepted (1..128 chars of [A-Za-z0-9._:-]) or generated; set in the logging
  context variable, on `request.state.request_id`, and echoed on every response;
- body limit: `Content-Length` over `max_body_bytes` -> 413 before reading anything; chunked bodies are
  counted while streamed and cut off with 413 as soon as they pass the limit;
- `request.state.timings` (service.timing.Timings) rendered as `Server-Timing` (+ `total`);
- per-endpoint request count and latency (endpoint = route template, so ids do not explode cardinality);
- in-flight counting for graceful drain: requests arriving while ready are admitted (probes are not);
- last-resort catch: an unexpected exception becomes a logged 500 JSON error, never a dropped connection.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.lifecycle import ServiceState
from service.logging import request_id_var
from service.timing import Timings

log = logging.getLogger("service.http")
access_log = logging.getLogger("service.access")

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(HTTPException):
    """Raised from the wrapped `receive` when a streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the {limit}-byte limit (max_body_bytes)")


def error_body(message: str, error_type: str, request_id: str) -> dict[str, str]:
    """The one error shape of the service."""
    return {"error": message, "error_type": error_type, "request_id": request_id}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _endpoint_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        rid = incoming if incoming and _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        timings = Timings()
        scope.setdefault("state", {}).update(request_id=rid, timings=timings, started=time.monotonic())
        counted = scope["path"] not in PROBE_PATHS
        lifecycle, metrics = self.state.lifecycle, self.state.metrics
        start = time.perf_counter()
        sent: dict[str, Any] = {"status": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"], sent["started"] = message["status"], True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                total = f"total;dur={(time.perf_counter() - start) * 1000.0:.2f}"
                stages = timings.header()
                headers["Server-Timing"] = f"{stages}, {total}" if stages else total
            await send(message)

        admitted = counted and lifecycle.admit()
        scope["state"]["admitted"] = admitted
        if counted:
            metrics.inflight.inc()
        try:
            await self._dispatch(scope, receive, send_wrapper, rid, sent)
        finally:
            seconds = time.perf_counter() - start
            if admitted:
                lifecycle.request_finished()
            if counted:
                metrics.inflight.dec()
            metrics.observe_request(_endpoint_label(scope), sent["status"], seconds)
            level = logging.DEBUG if not counted else logging.INFO
            access_log.log(
                level,
                "%s %s -> %s in %.1f ms (%s)",
                scope.get("method"),
                scope.get("path"),
                sent["status"],
                seconds * 1000.0,
                timings.header() or "-",
            )
            request_id_var.reset(token)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, rid: str, sent: dict) -> None:
        limit = self.state.settings.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _send_error(send, 400, "invalid Content-Length header", "bad_request", rid)
                return
            if int(length) > limit:
                await _send_error(send, 413, BodyTooLarge(limit).detail, "payload_too_large", rid, close=True)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge as exc:
            if not sent["started"]:
                await _send_error(send, 413, str(exc.detail), "payload_too_large", rid, close=True)
        except Exception:
            log.exception("unhandled error while serving %s %s", scope.get("method"), scope.get("path"))
            if not sent["started"]:
                await _send_error(send, 500, "internal server error", "internal_error", rid)


async def _send_error(
    send: Send, status: int, message: str, error_type: str, rid: str, *, close: bool = False
) -> None:
    body = json.dumps(error_body(message, error_type, rid)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
