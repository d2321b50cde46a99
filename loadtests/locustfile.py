"""Locust user classes that behave like real samclip-serve clients.

- ClickToSegmentUser: an interactive annotator. One POST /embed per new image, then many POST /segment/prompt
  clicks on that `image_id` (points, sometimes a box), then the next image. Exercises the embedding cache.
- TextSegmentUser: a batch pipeline posting NEW images to POST /segment?text=... (every call is an encoder pass).
- ClassifyUser: zero-shot tagging with POST /classify and a label set (new images; labels hit the text cache).

Images are generated in code (loadtests/images.py), a new seed per image so every upload is a cache miss.

Settings (environment variables):
    SAMCLIP_LT_WEIGHT_CLICK / _TEXT / _CLASSIFY   user-class weights (default 3 / 2 / 1; 0 disables a class)
    SAMCLIP_LT_WAIT_MIN / SAMCLIP_LT_WAIT_MAX     seconds between a user's tasks (default 0.5 / 2.0)
    SAMCLIP_LT_CLICKS_PER_IMAGE                   prompt calls before a click user moves on (default 8)
    SAMCLIP_LT_IMAGE_SIZE                         base image size WxH (default 640x480)
    SAMCLIP_LT_IMAGE_POOL                         distinct drawn images (default 32; each upload is still unique)
    SAMCLIP_LT_API_KEY                            sent as X-API-Key when set
    SAMCLIP_LT_RECORD                             path: per-request (endpoint, status, latency) JSON written at
                                                  test stop (loadtests/run.py uses it for per-status percentiles)

Expected statuses: 200 is success; 429 (queue full) and 503 (draining) are back-pressure, recorded as failures
with the message "HTTP <status>" so Locust's tables count them; anything else is a failure too.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
from collections import defaultdict
from pathlib import Path

from locust import HttpUser, between, events, task

try:
    from loadtests.images import make_image
except ImportError:  # `locust -f loadtests/locustfile.py` from elsewhere: Locust puts this folder on sys.path
    from images import make_image


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


WAIT = between(_env_float("SAMCLIP_LT_WAIT_MIN", 0.5), _env_float("SAMCLIP_LT_WAIT_MAX", 2.0))
CLICKS_PER_IMAGE = _env_int("SAMCLIP_LT_CLICKS_PER_IMAGE", 8)
POOL_SIZE = _env_int("SAMCLIP_LT_IMAGE_POOL", 32)
IMAGE_SIZE = tuple(int(v) for v in os.environ.get("SAMCLIP_LT_IMAGE_SIZE", "640x480").lower().split("x"))
TEXTS = ["dog", "cat", "person", "car", "tree", "building", "sky", "road"]
LABEL_SETS = [
    ["dog", "cat", "bird", "horse"],
    ["car", "truck", "bus", "bicycle", "motorcycle"],
    ["apple", "banana", "orange"],
]

_seeds = itertools.count(random.SystemRandom().randrange(1 << 30))
_seed_lock = threading.Lock()


_pool: list[bytes] = []


def new_image() -> bytes:
    """A never-seen-before JPEG: one of POOL_SIZE pre-drawn images with a unique JPEG comment (COM) segment, so
    its bytes (and sha256: the server's cache key) are new while no image is drawn inside the timed loop (the
    gevent-based client would otherwise stall every user while one draws, inflating measured latencies)."""
    with _seed_lock:
        if not _pool:
            _pool.extend(make_image(seed, base_size=IMAGE_SIZE) for seed in range(POOL_SIZE))
        count = next(_seeds)
    base = _pool[count % len(_pool)]
    comment = f"samclip-loadtest {count}".encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]


# --- per-request recording (endpoint, status, latency) for loadtests/run.py ---------------------------------
_records: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, exception=None, **_):
    status = getattr(response, "status_code", None) or 0  # 0: connection error / no response
    _records[f"{request_type} {name}"][str(status)].append(float(response_time))


@events.test_stop.add_listener
def _dump(environment, **_):
    path = os.environ.get("SAMCLIP_LT_RECORD")
    if path:
        Path(path).write_text(json.dumps({name: dict(by_status) for name, by_status in _records.items()}))


class SamclipUser(HttpUser):
    abstract = True
    wait_time = WAIT

    def on_start(self) -> None:
        key = os.environ.get("SAMCLIP_LT_API_KEY")
        if key:
            self.client.headers["X-API-Key"] = key

    def post_checked(self, path: str, name: str, **kwargs) -> dict | None:
        """POST and classify the answer; returns the JSON body on 200, else None (a recorded failure)."""
        with self.client.post(path, name=name, catch_response=True, **kwargs) as response:
            if response.status_code == 200:
                try:
                    body = response.json()
                except ValueError:
                    response.failure("200 with a body that is not JSON")
                    return None
                response.success()
                return body
            response.failure(f"HTTP {response.status_code}")
            return None


class ClickToSegmentUser(SamclipUser):
    """One /embed per image, then CLICKS_PER_IMAGE /segment/prompt calls by image_id."""

    weight = _env_int("SAMCLIP_LT_WEIGHT_CLICK", 3)

    def on_start(self) -> None:
        super().on_start()
        self.image_id: str | None = None
        self.clicks_left = 0
        self.size = (1, 1)

    def embed_new_image(self) -> None:
        body = self.post_checked("/embed", "/embed", data=new_image(), headers={"Content-Type": "image/jpeg"})
        if body is not None:
            self.image_id, self.size, self.clicks_left = (
                body["image_id"],
                (body["width"], body["height"]),
                CLICKS_PER_IMAGE,
            )

    @task
    def click(self) -> None:
        if self.image_id is None or self.clicks_left <= 0:
            self.embed_new_image()
            return
        width, height = self.size
        points = [
            {"x": random.uniform(0, width - 1), "y": random.uniform(0, height - 1), "label": 1}
            for _ in range(random.randint(1, 3))
        ]
        prompt: dict = {"points": points}
        if random.random() < 0.3:
            x0, y0 = random.uniform(0, width / 2), random.uniform(0, height / 2)
            prompt["box"] = [x0, y0, x0 + width / 3, y0 + height / 3]
        payload = {"image_id": self.image_id, "prompts": [prompt], "multimask": random.random() < 0.5}
        with self.client.post(
            "/segment/prompt", name="/segment/prompt", json=payload, catch_response=True
        ) as resp:
            if resp.status_code == 200:
                resp.success()
            elif resp.status_code == 404:  # embedding evicted or served by another replica: embed again
                resp.success()
                self.image_id = None
            else:
                resp.failure(f"HTTP {resp.status_code}")
        self.clicks_left -= 1


class TextSegmentUser(SamclipUser):
    """Posts a NEW image to /segment?text=... each time."""

    weight = _env_int("SAMCLIP_LT_WEIGHT_TEXT", 2)

    @task
    def segment_text(self) -> None:
        text = random.choice(TEXTS)
        self.post_checked(
            f"/segment?text={text}",
            "/segment?text=",
            data=new_image(),
            headers={"Content-Type": "image/jpeg"},
        )


class ClassifyUser(SamclipUser):
    """Zero-shot classify of NEW images against one of a few label sets."""

    weight = _env_int("SAMCLIP_LT_WEIGHT_CLASSIFY", 1)

    @task
    def classify(self) -> None:
        labels = random.choice(LABEL_SETS)
        query = "&".join(f"labels={label}" for label in labels)
        self.post_checked(
            f"/classify?{query}&top_k=3",
            "/classify",
            data=new_image(),
            headers={"Content-Type": "image/jpeg"},
        )
