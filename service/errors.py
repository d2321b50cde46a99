"""Typed service errors. Anything raised as a `ServiceError` becomes a JSON response
`{"error", "error_type", "request_id"}` with its status code (see service/main.py exception handlers)."""

from __future__ import annotations


class ServiceError(Exception):
    status_code: int = 400
    error_type: str = "bad_request"

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if error_type is not None:
            self.error_type = error_type


class BadRequest(ServiceError):
    status_code, error_type = 400, "bad_request"


class Unauthorized(ServiceError):
    status_code, error_type = 401, "unauthorized"


class NotFound(ServiceError):
    status_code, error_type = 404, "not_found"


class PayloadTooLarge(ServiceError):
    status_code, error_type = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code, error_type = 415, "unsupported_media_type"


class InvalidInput(ServiceError):
    status_code, error_type = 422, "invalid_input"


class InvalidImage(ServiceError):
    status_code, error_type = 422, "invalid_image"


class NotAcceptable(ServiceError):
    status_code, error_type = 406, "not_acceptable"


class QueueFull(ServiceError):
    status_code, error_type = 429, "queue_full"


class NotReady(ServiceError):
    status_code, error_type = 503, "not_ready"


class DeadlineExceeded(ServiceError):
    status_code, error_type = 504, "deadline_exceeded"


class InferenceFailed(ServiceError):
    """A backend call failed for this request's batch only; the process keeps serving."""

    status_code, error_type = 500, "inference_failed"
