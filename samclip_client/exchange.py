"""How one call is sent, written once as a generator ("sans-IO") and driven by the sync and async clients.

The generator yields `Send(request kwargs)` (the driver answers with the httpx.Response) or `Sleep(seconds)`
(the driver sleeps and answers None), and finally returns the parsed result. Per call:
1. An image this client has seen the server accept goes by id (JSON `{"image_id": ...}`); a new one is
   uploaded (raw body `application/octet-stream`, or multipart `image` + `prompts` for /segment/prompt).
   Every request about an image carries `X-Image-Id: <sha256 hex>` so an L7 proxy can route on it.
2. 404 `not_found` on a request by id (the server evicted or never had the image, e.g. another replica or a
   restart): the same call is sent again with the image uploaded, once, transparently.
3. 429 / 503: wait as Retry-After says and resend, within the Retry policy's attempts and time budget.
4. Any other non-2xx answer raises SamclipError.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx

from samclip_client.calls import Call
from samclip_client.errors import SamclipError, error_type
from samclip_client.images import ImageData
from samclip_client.retry import Retry

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class Send:
    request: dict[str, Any]  # keyword arguments of httpx.Client.request


@dataclass(frozen=True)
class Sleep:
    seconds: float


class KnownImages:
    """The image ids the server has accepted from this client (LRU of `capacity` ids; thread-safe)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._ids

    def add(self, image_id: str) -> None:
        with self._lock:
            self._ids[image_id] = None
            self._ids.move_to_end(image_id)
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)

    def discard(self, image_id: str) -> None:
        with self._lock:
            self._ids.pop(image_id, None)


def build_request(call: Call, image: ImageData | None, by_id: bool) -> dict[str, Any]:
    """httpx request kwargs for `call` about `image`, by id or with the bytes uploaded."""
    request: dict[str, Any] = {"method": call.method, "url": call.path, "params": call.query(), "headers": {}}
    if image is None:
        return request
    request["headers"]["X-Image-Id"] = image.image_id
    if by_id:
        request["json"] = {"image_id": image.image_id, **(call.body or {})}
    elif call.body is not None:
        request["files"] = {"image": ("image", image.data, OCTET_STREAM)}
        request["data"] = {"prompts": json.dumps(call.body)}
    else:
        request["content"] = image.data
        request["headers"]["Content-Type"] = OCTET_STREAM
    return request


def exchange(
    call: Call, image: ImageData | None, known: KnownImages, retry: Retry
) -> Generator[Send | Sleep, httpx.Response | None, Any]:
    """Send `call` (see the module docstring); returns `call.parse(json)`; raises SamclipError."""
    if call.image and image is None:
        raise ValueError(f"{call.path} needs an image")
    by_id = image is not None and image.image_id in known
    start, attempt = time.monotonic(), 0
    while True:
        response = yield Send(build_request(call, image, by_id))
        assert response is not None
        attempt += 1
        if response.status_code == 404 and by_id and error_type(response) == "not_found":
            known.discard(image.image_id)  # type: ignore[union-attr]
            by_id = False
            continue
        wait = retry.delay(
            response.status_code, response.headers.get("retry-after"), attempt, time.monotonic() - start
        )
        if wait is not None:
            yield Sleep(wait)
            continue
        if response.is_error:
            raise SamclipError.from_response(response, attempt)
        if image is not None:
            known.add(image.image_id)
        return call.parse(response.json())
