"""The one error type of the client: a non-2xx answer of the server, or a retry budget spent."""

from __future__ import annotations

from typing import Any

import httpx


class SamclipError(Exception):
    """The server answered `status` with `{"error", "error_type", "request_id"}` (error_type "http_error" when
    the body was not that JSON, e.g. from a proxy). After the retry budget for 429/503 is spent, the last
    answer is raised; `attempts` says how many requests were sent."""

    def __init__(
        self, status: int, error_type: str, message: str, request_id: str | None = None, attempts: int = 1
    ) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.request_id = request_id
        self.attempts = attempts

    @classmethod
    def from_response(cls, response: httpx.Response, attempts: int = 1) -> SamclipError:
        body = _json_or_none(response)
        if isinstance(body, dict) and "error" in body:
            return cls(
                response.status_code,
                str(body.get("error_type", "http_error")),
                str(body["error"]),
                body.get("request_id"),
                attempts,
            )
        text = response.text[:300] or response.reason_phrase
        return cls(response.status_code, "http_error", text, response.headers.get("x-request-id"), attempts)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_type(response: httpx.Response) -> str | None:
    """The `error_type` of an error answer, or None when the body is not the service's error JSON."""
    body = _json_or_none(response)
    return body.get("error_type") if isinstance(body, dict) else None
