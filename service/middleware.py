"""The one HTTP middleware (pure ASGI, so it sees the body stream and every response):

- request id: `X-Request-ID` accepted (1..128 chars of [A-Za-z0-9._:-]) or generated; set in the logging
  context variable, on `request.state.request_id`, and echoed on every response;
- body limit: `Content-Length` over `max_body_bytes` -> 413 before reading anything; chunked bodies are
  counted while streamed and cut off with 413 as soon as they pass the limit;
- `request.state.timings` (service.timing.Timings) rendered as `Server-Timing` (+ `total`);
- per-endpoint request count and latency (endpoint = route template, so ids do not explode cardinality);
- in-flight counting for graceful drain: requests arriving while ready are admitted (probes are not);
- client disconnect (logged and counted as status 499, no traceback): while the body is read, the request
  simply ends; once the body is read, a watcher waits for `http.disconnect`, and if the client goes away
  before the response is complete the request's task is cancelled, so whatever it waits for (decode slot,
  encoder queue) is released and its queued encoder work is dropped;
- cancellation (uvicorn cancels the tasks still running when its shutdown timeout ends a drain): logged as
  cancelled without a traceback, answered with 503 JSON if the response has not started and counted as 503
  (499 when the client was already gone), never uvicorn's "Exception in ASGI application" 500;
- last-resort catch: an unexpected exception becomes a logged 500 JSON error, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.lifecycle import ServiceState
from service.logging import request_id_var
from service.timing import Timings

log = logging.getLogger("service.http")
access_log = logging.getLogger("service.access")

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_CLOSED_REQUEST = 499  # nginx's convention for "the client went away before the response"
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
        sent: dict[str, Any] = {"status": 500, "started": False, "complete": False, "disconnected": False}
        note = ""

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent["complete"] = True  # before sending: a disconnect seen after this is the normal end
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
        except asyncio.CancelledError:
            note = await self._cancelled(send_wrapper, rid, sent)
        finally:
            seconds = time.perf_counter() - start
            if admitted:
                lifecycle.request_finished()
            if counted:
                metrics.inflight.dec()
            metrics.observe_request(_endpoint_label(scope), sent["status"], seconds)
            _access_line(scope, sent["status"], seconds, timings, note, probe=not counted)
            request_id_var.reset(token)

    async def _cancelled(self, send: Send, rid: str, sent: dict) -> str:
        """The request's task was cancelled: by the disconnect watcher (client gone) or by the server (drain
        timeout at shutdown). Answer 503 if still possible, record the status, and end the task normally so
        the server logs no traceback. Returns the note for the access log line."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if sent["disconnected"]:
            sent["status"] = CLIENT_CLOSED_REQUEST
            return " [cancelled: client disconnected]"
        if not sent["started"]:
            with contextlib.suppress(Exception):
                message = "the server is shutting down and cancelled this request; retry"
                await _send_error(send, 503, message, "not_ready", rid, close=True, retry_after=5)
        sent["status"] = 503 if sent["started"] else CLIENT_CLOSED_REQUEST
        log.warning("request cancelled by the server (shutdown timeout) -> %s", sent["status"])
        return " [cancelled: server shutdown]"

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
        watcher: asyncio.Task[Message] | None = None
        task = asyncio.current_task()

        async def watch_disconnect() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not sent["complete"] and task is not None:
                sent["disconnected"] = True
                task.cancel()
            return message

        async def limited_receive() -> Message:
            nonlocal received, watcher
            if watcher is not None:  # body complete: the watcher owns `receive`; share its message
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                if not message.get("more_body", False):
                    watcher = asyncio.ensure_future(watch_disconnect())
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge as exc:
            if not sent["started"]:
                await _send_error(send, 413, str(exc.detail), "payload_too_large", rid, close=True)
        except ClientDisconnect:  # the client left while its body was still being read: nothing to answer
            sent["disconnected"], sent["status"] = True, CLIENT_CLOSED_REQUEST
        except Exception:
            log.exception("unhandled error while serving %s %s", scope.get("method"), scope.get("path"))
            if not sent["started"]:
                await _send_error(send, 500, "internal server error", "internal_error", rid)
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()


async def _send_error(
    send: Send,
    status: int,
    message: str,
    error_type: str,
    rid: str,
    *,
    close: bool = False,
    retry_after: int | None = None,
) -> None:
    body = json.dumps(error_body(message, error_type, rid)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _access_line(scope: Scope, status: int, seconds: float, timings: Timings, note: str, probe: bool) -> None:
    """One access-log line per request (probes at DEBUG): method, path, status, time, Server-Timing stages."""
    access_log.log(
        logging.DEBUG if probe else logging.INFO,
        "%s %s -> %s in %.1f ms (%s)%s",
        scope.get("method"),
        scope.get("path"),
        status,
        seconds * 1000.0,
        timings.header() or "-",
        note,
    )
