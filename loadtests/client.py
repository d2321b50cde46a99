"""What every samclip-serve Locust user shares: image sources, the X-Image-Id header, response checks and
Retry-After back-off. The user classes themselves are in loadtests/locustfile.py.

Request rules (docs/interfaces: `image_id` = lowercase hex sha256 of the uploaded bytes):
- every request about an image carries `X-Image-Id: <sha256 hex>` (computed here, before the upload, or the
  known `image_id`), so an L7 proxy can hash on it; an upload whose answer names another `image_id` is a failure;
- 200 is success; a 404 on an `image_id` request is a failure ("HTTP 404 unknown image_id": the embedding was
  evicted or lives on another replica) and the user moves on to a new image;
- 429 and 503 are failures ("HTTP 429"/"HTTP 503"); the user honours any `Retry-After` (429/503 from the
  service, 502/503/504 made by a proxy) before its next task (capped by SAMCLIP_LT_RETRY_AFTER_CAP); anything
  else is a failure too.
"""

from __future__ import annotations

import email.utils
import itertools
import os
import random
import threading
import time
from typing import Any

from locust import HttpUser, between

from loadtests.images import (
    image_id,
    make_image,
    parse_sizes,
    photo,
    photo_sizes_from_env,
    unique_jpeg,
)


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


WAIT = between(env_float("SAMCLIP_LT_WAIT_MIN", 0.5), env_float("SAMCLIP_LT_WAIT_MAX", 2.0))
RETRY_AFTER_CAP_S = env_float("SAMCLIP_LT_RETRY_AFTER_CAP", 30.0)
POOL_SIZE = env_int("SAMCLIP_LT_IMAGE_POOL", 32)
IMAGE_SIZE = parse_sizes(os.environ.get("SAMCLIP_LT_IMAGE_SIZE", "640x480"))[0]
PHOTO_FRACTION = env_float("SAMCLIP_LT_PHOTO_FRACTION", 0.2)
PHOTO_SIZES = photo_sizes_from_env()


class ImageSource:
    """Never-seen-before JPEGs: a pre-drawn pool of small synthetic images and of real-size photos (from the disk
    cache, generated once), each upload made unique by `unique_jpeg`. `load()` fills the pools; call it before
    users start (nothing is drawn or read from disk inside the timed loop: the gevent client would stall)."""

    def __init__(self, photo_fraction: float = PHOTO_FRACTION) -> None:
        self.photo_fraction = photo_fraction
        self.synthetic: list[bytes] = []
        self.photos: list[bytes] = []
        self._counter = itertools.count(random.SystemRandom().randrange(1 << 40))
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if not self.synthetic:
                self.synthetic = [make_image(seed, base_size=IMAGE_SIZE) for seed in range(POOL_SIZE)]
            if self.photo_fraction > 0 and not self.photos:
                self.photos = [photo(seed, size) for seed, size in enumerate(PHOTO_SIZES)]

    def new_image(self) -> bytes:
        self.load()
        count = next(self._counter)
        use_photo = self.photos and random.random() < self.photo_fraction
        pool = self.photos if use_photo else self.synthetic
        return unique_jpeg(pool[count % len(pool)], count)


IMAGES = ImageSource()


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: delta-seconds ('3') or an HTTP date; None when absent or unparsable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class SamclipUser(HttpUser):
    """Base user: API key, X-Image-Id on image requests, status checks and Retry-After back-off."""

    abstract = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_at = 0.0  # time.monotonic() before which the next task must not start (Retry-After)
        self.last_status = 0  # HTTP status of the last image request (0: no answer)

    def context(self) -> dict:
        """Passed to every request event: which user sent it (loadtests/recording.py events)."""
        return {"user": id(self)}

    def wait_time(self) -> float:
        """The configured think time, or longer while a Retry-After is pending."""
        return max(WAIT(self), self.resume_at - time.monotonic())

    def on_start(self) -> None:
        key = os.environ.get("SAMCLIP_LT_API_KEY")
        if key:
            self.client.headers["X-API-Key"] = key

    def honour_retry_after(self, response: Any) -> None:
        delay = parse_retry_after(response.headers.get("Retry-After"))
        if delay is not None:
            self.resume_at = max(self.resume_at, time.monotonic() + min(delay, RETRY_AFTER_CAP_S))

    def _checked(self, response: Any, expect_id: str, by_id: bool) -> dict | None:
        """Classify one answer (inside `catch_response`): the JSON body on 200, else None (a failure)."""
        status = self.last_status = response.status_code or 0
        if "Retry-After" in response.headers:  # 429, 503 (service), 502/503/504 made by the proxy
            self.honour_retry_after(response)
        if status == 200:
            try:
                body = response.json()
            except ValueError:
                response.failure("200 with a body that is not JSON")
                return None
            if body.get("image_id") not in (None, expect_id):
                response.failure(f"image_id {body.get('image_id')} is not the sha256 of the upload")
                return None
            response.success()
            return body
        response.failure("HTTP 404 unknown image_id" if status == 404 and by_id else f"HTTP {status}")
        return None

    def post_image(self, path: str, name: str, data: bytes) -> dict | None:
        """POST the raw image bytes (Content-Type image/jpeg) with X-Image-Id = sha256(data)."""
        digest = image_id(data)
        headers = {"Content-Type": "image/jpeg", "X-Image-Id": digest}
        context = {"image_id": digest, "by_id": False}
        with self.client.post(
            path, name=name, data=data, headers=headers, catch_response=True, context=context
        ) as response:
            return self._checked(response, digest, by_id=False)

    def post_by_id(self, path: str, name: str, image_id_: str, payload: dict | None = None) -> dict | None:
        """POST a JSON body {"image_id": ..., **payload} with X-Image-Id = image_id_."""
        context = {"image_id": image_id_, "by_id": True}
        with self.client.post(
            path,
            name=name,
            json={"image_id": image_id_, **(payload or {})},
            headers={"X-Image-Id": image_id_},
            catch_response=True,
            context=context,
        ) as response:
            return self._checked(response, image_id_, by_id=True)
