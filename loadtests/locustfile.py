"""Locust user classes that behave like real samclip-serve clients.

- ClickToSegmentUser: an interactive annotator. One POST /embed per new image, then many POST /segment/prompt
  clicks on that `image_id` (points, sometimes a box), then the next image. Exercises the embedding cache.
- TextSegmentUser: a batch pipeline posting NEW images to POST /segment?text=... (every call is an encoder pass).
- ClassifyUser: zero-shot tagging with POST /classify and a label set (new images; labels hit the text cache).
- RefineUser: POST /segment/refine?text=... with a NEW image, then more texts on the same `image_id`.
- ConstantArrivalUser (weight 0 unless SAMCLIP_LT_WEIGHT_ARRIVAL is set): an OPEN-loop load at a constant
  arrival rate, see below.

Every upload is a never-seen image (loadtests/client.py ImageSource): a small synthetic drawing, or with
probability SAMCLIP_LT_PHOTO_FRACTION a real-size photo (3-12 MP, generated once and cached on disk). Every
request about an image sends `X-Image-Id: <sha256 hex>`; a 404 on an `image_id` is a failure; 429/503 are
failures whose `Retry-After` the user honours before its next task (loadtests/client.py).

Constant arrival rate. Locust's `constant_throughput(r)` / `constant_pacing(t)` are closed loops: a user waits
for its answer before its next task, so once latency exceeds 1/r the user runs late and the offered rate drops
exactly when the server slows down (coordinated omission). A `LoadTestShape` only sets the number of users, so it
has the same flaw. ConstantArrivalUser therefore schedules request k at t0 + k / rate on an absolute clock and
sends each one in its own greenlet, whatever the earlier ones are doing: the offered rate stays `rate` until
SAMCLIP_LT_ARRIVAL_MAX_OUTSTANDING requests are in flight; an arrival beyond that is recorded as a failure
("dropped", name "ARRIVAL dropped") instead of silently lowering the rate. Run ONE such user
(`python -m loadtests.run --scenario arrival --rate R`). It keeps its rate after a 429 (that is the point of an
open model); the 429s are counted.

Settings (environment variables):
    SAMCLIP_LT_WEIGHT_CLICK / _TEXT / _CLASSIFY / _REFINE / _ARRIVAL   class weights (3 / 2 / 1 / 1 / 0; 0 = off)
    SAMCLIP_LT_WAIT_MIN / SAMCLIP_LT_WAIT_MAX     seconds between a user's tasks (default 0.5 / 2.0)
    SAMCLIP_LT_CLICKS_PER_IMAGE                   mean prompt calls per image, +-50 % (default 8)
    SAMCLIP_LT_REFINES_PER_IMAGE                  refine calls per image, the first one uploads (default 2)
    SAMCLIP_LT_IMAGE_SIZE / SAMCLIP_LT_IMAGE_POOL synthetic image base size WxH (640x480) / pool size (32)
    SAMCLIP_LT_PHOTO_FRACTION                     share of uploads that are real-size photos (default 0.2)
    SAMCLIP_LT_PHOTO_SIZES                        photo sizes, e.g. 2000x1500,4000x3000 (default 3, 8, 12 MP)
    SAMCLIP_LT_PHOTO_DIR                          photo disk cache (default ~/.cache/samclip-loadtests/photos)
    SAMCLIP_LT_RETRY_AFTER_CAP                    longest Retry-After honoured, seconds (default 30)
    SAMCLIP_LT_ARRIVAL_RATE / _MAX_OUTSTANDING / _OP   arrivals per second per arrival user (default 2), most in
                                                  flight (64), request per arrival: segment|classify|refine|embed
    SAMCLIP_LT_API_KEY                            sent as X-API-Key when set
    SAMCLIP_LT_RECORD / SAMCLIP_LT_EVENTS         per-request recording for the runners (loadtests/recording.py)
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import gevent
from gevent.pool import Pool
from locust import events, task
from urllib3 import PoolManager

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `locust -f loadtests/locustfile.py` anywhere

from loadtests import recording  # noqa: E402,F401  (registers the recording listeners)
from loadtests.client import IMAGES, SamclipUser, env_float, env_int  # noqa: E402

CLICKS_PER_IMAGE = env_int("SAMCLIP_LT_CLICKS_PER_IMAGE", 8)
REFINES_PER_IMAGE = env_int("SAMCLIP_LT_REFINES_PER_IMAGE", 2)
ARRIVAL_RATE = env_float("SAMCLIP_LT_ARRIVAL_RATE", 2.0)
ARRIVAL_MAX_OUTSTANDING = env_int("SAMCLIP_LT_ARRIVAL_MAX_OUTSTANDING", 64)
TEXTS = ["dog", "cat", "person", "car", "tree", "building", "sky", "road"]
LABEL_SETS = [
    ["dog", "cat", "bird", "horse"],
    ["car", "truck", "bus", "bicycle", "motorcycle"],
    ["apple", "banana", "orange"],
]


@events.init.add_listener
def _load_images(environment, **_):
    IMAGES.load()  # photos are read (or generated once) before any user starts
    gevent.get_hub().loop.update_now()  # else libev's cached clock makes `-t` count the time spent loading


def random_prompt(width: int, height: int) -> dict:
    """One SAM prompt in original-image pixels: 1-3 positive points, a box 30% of the time."""
    points = [
        {"x": random.uniform(0, width - 1), "y": random.uniform(0, height - 1), "label": 1}
        for _ in range(random.randint(1, 3))
    ]
    prompt: dict = {"points": points}
    if random.random() < 0.3:
        x0, y0 = random.uniform(0, width / 2), random.uniform(0, height / 2)
        prompt["box"] = [x0, y0, x0 + width / 3, y0 + height / 3]
    return prompt


class ClickToSegmentUser(SamclipUser):
    """One /embed per image, then CLICKS_PER_IMAGE (+-50 %, so users do not move in step) /segment/prompt calls
    by image_id. A 404 (evicted, or
    routed to a replica that does not hold the image) is a failure and the user moves on to a NEW image, so an
    image is embedded once and the share of 200s among the clicks is the `image_id` hit ratio."""

    weight = env_int("SAMCLIP_LT_WEIGHT_CLICK", 3)

    def on_start(self) -> None:
        super().on_start()
        self.image_id: str | None = None
        self.clicks_left = 0
        self.size = (1, 1)

    @task
    def click(self) -> None:
        if self.image_id is None or self.clicks_left <= 0:
            body = self.post_image("/embed", "/embed", IMAGES.new_image())
            if body is not None:
                self.image_id, self.size = body["image_id"], (body["width"], body["height"])
                self.clicks_left = random.randint(max(1, CLICKS_PER_IMAGE // 2), CLICKS_PER_IMAGE * 3 // 2)
            return
        payload = {"prompts": [random_prompt(*self.size)], "multimask": random.random() < 0.5}
        self.post_by_id("/segment/prompt", "/segment/prompt", self.image_id, payload)
        self.clicks_left -= 1
        if self.last_status == 404:  # evicted or on another replica: next image (a failure was recorded)
            self.image_id = None


class TextSegmentUser(SamclipUser):
    """Posts a NEW image to /segment?text=... each time."""

    weight = env_int("SAMCLIP_LT_WEIGHT_TEXT", 2)

    @task
    def segment_text(self) -> None:
        self.post_image(f"/segment?text={random.choice(TEXTS)}", "/segment?text=", IMAGES.new_image())


class ClassifyUser(SamclipUser):
    """Zero-shot classify of NEW images against one of a few label sets."""

    weight = env_int("SAMCLIP_LT_WEIGHT_CLASSIFY", 1)

    @task
    def classify(self) -> None:
        query = "&".join(f"labels={label}" for label in random.choice(LABEL_SETS))
        self.post_image(f"/classify?{query}&top_k=3", "/classify", IMAGES.new_image())


class RefineUser(SamclipUser):
    """CLIP->SAM refine: a NEW image to /segment/refine?text=..., then REFINES_PER_IMAGE - 1 other texts on its
    `image_id` (named "/segment/refine?text= [image_id]")."""

    weight = env_int("SAMCLIP_LT_WEIGHT_REFINE", 1)

    def on_start(self) -> None:
        super().on_start()
        self.image_id: str | None = None
        self.refines_left = 0

    @task
    def refine(self) -> None:
        text = random.choice(TEXTS)
        if self.image_id is None or self.refines_left <= 0:
            body = self.post_image(
                f"/segment/refine?text={text}", "/segment/refine?text=", IMAGES.new_image()
            )
            self.image_id = body["image_id"] if body is not None else None
            self.refines_left = REFINES_PER_IMAGE - 1
            return
        name = "/segment/refine?text= [image_id]"
        self.post_by_id(f"/segment/refine?text={text}", name, self.image_id)
        if self.last_status == 404:
            self.image_id = None
        self.refines_left -= 1


ARRIVAL_OPS = {
    "segment": lambda user: TextSegmentUser.segment_text(user),
    "classify": lambda user: ClassifyUser.classify(user),
    "embed": lambda user: user.post_image("/embed", "/embed", IMAGES.new_image()),
    "refine": lambda user: user.post_image(
        f"/segment/refine?text={random.choice(TEXTS)}", "/segment/refine?text=", IMAGES.new_image()
    ),
}


class ConstantArrivalUser(SamclipUser):
    """Open-loop arrivals (module doc): arrival k is due at t0 + k / ARRIVAL_RATE; the task only starts it in
    its own greenlet and `wait_time` sleeps until the next one is due on that absolute clock, so a slow answer
    never delays later arrivals. Locust's own task loop stops the user; on_stop lets in-flight requests finish."""

    weight = env_int("SAMCLIP_LT_WEIGHT_ARRIVAL", 0)
    pool_manager = PoolManager(maxsize=ARRIVAL_MAX_OUTSTANDING)  # one kept connection per in-flight request

    def on_start(self) -> None:
        super().on_start()
        self.op = ARRIVAL_OPS[os.environ.get("SAMCLIP_LT_ARRIVAL_OP", "segment")]
        self.pool = Pool(ARRIVAL_MAX_OUTSTANDING)
        self.due = time.monotonic()

    def wait_time(self) -> float:
        return max(0.0, self.due - time.monotonic())

    @task
    def arrive(self) -> None:
        if self.pool.full():
            self.environment.events.request.fire(
                request_type="ARRIVAL",
                name="dropped",
                response_time=0,
                response_length=0,
                exception=RuntimeError(f"{ARRIVAL_MAX_OUTSTANDING} requests outstanding"),
                context={"dropped": True},
                start_time=time.time(),
            )
        else:
            self.pool.spawn(self.op, self)
        self.due += 1.0 / ARRIVAL_RATE

    def on_stop(self) -> None:
        self.pool.join(timeout=30)
