"""A fake Predictor implementing service/PIPELINE.md (used IN ADDITION to the real one, for paths the real
one cannot reach on demand: blocked start-up, failed start-up, unexpected exceptions)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import NotFound
from service.pipeline.prompts import validate_prompts


@dataclass
class FakeEntry:
    image_id: str
    width: int
    height: int
    cached: bool


@dataclass
class FakeMask:
    mask: np.ndarray
    score: float
    iou_prediction: float | None = None
    label: str | None = None
    low_res_logits: Any = None


@dataclass
class FakeLabelScore:
    label: str
    probability: float
    logit: float


@dataclass
class FakeRefine:
    mask: FakeMask
    coarse: FakeMask
    points: list[tuple[float, float, int]]


@dataclass
class FakePredictor:
    settings: Any
    metrics: Any
    start_gate: asyncio.Event | None = None
    start_error: Exception | None = None
    boom: Exception | None = None
    hold: threading.Event | None = None  # get_entry waits (on the loop) until it is set
    ready: bool = False
    entries: dict[str, tuple[int, int]] = field(default_factory=dict)

    async def start(self) -> None:
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.start_error is not None:
            raise self.start_error
        self.ready = True

    async def stop(self) -> None:
        self.ready = False

    async def get_entry(
        self, *, image: Any, image_id: str | None, timings: Any, deadline: float
    ) -> FakeEntry:
        while self.hold is not None and not self.hold.is_set():
            await asyncio.sleep(0.005)
        if self.boom is not None:
            raise self.boom
        if image is None:
            if image_id not in self.entries:
                raise NotFound(f"image_id {image_id!r} is not in the cache")
            width, height = self.entries[image_id]
            timings.cache_hit = True
            return FakeEntry(image_id, width, height, True)
        cached = image.sha256 in self.entries
        if not cached:
            self.metrics.encoder_runs.inc()
            self.entries[image.sha256] = (image.width, image.height)
        timings.cache_hit = cached
        return FakeEntry(image.sha256, image.width, image.height, cached)

    def _mask(self, entry: FakeEntry, label: str | None, k: int) -> FakeMask:
        mask = np.zeros((entry.height, entry.width), bool)
        mask[k : entry.height // 2 + k, : entry.width // 2] = True
        return FakeMask(mask, 0.5, None, label)

    async def classify(self, entry: FakeEntry, labels: list[str], top_k: int, timings: Any) -> list:
        logits = np.arange(len(labels), dtype=np.float64)
        probs = np.exp(logits) / np.exp(logits).sum()
        return [
            FakeLabelScore(label, float(p), float(lg))
            for label, p, lg in zip(labels, probs, logits, strict=True)
        ]

    async def segment_text(self, entry: FakeEntry, texts: list[str], timings: Any) -> list[FakeMask]:
        return [self._mask(entry, t, i) for i, t in enumerate(texts)]

    async def segment_prompts(self, entry: FakeEntry, request: Any, timings: Any) -> list[list[FakeMask]]:
        specs = request.all_prompts()
        validate_prompts(specs, entry.width, entry.height, self.settings)
        n = 3 if request.multimask else 1
        return [[self._mask(entry, None, j) for j in range(n)] for _ in specs]

    async def refine(
        self, entry: FakeEntry, text: str, num_points: int, seed: int, timings: Any
    ) -> FakeRefine:
        points = [(float(i), float(i), 1) for i in range(num_points)]
        return FakeRefine(self._mask(entry, text, 0), self._mask(entry, text, 1), points)


# --- helpers shared by the app tests --------------------------------------------------------------------------
def wait_status(client: Any, want: set[str], timeout_s: float = 120.0) -> dict:
    """Poll /readyz until its status is in `want` (e.g. {"ready"} or {"failed"}); returns the body."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get("/readyz").json()
        if body["status"] in want or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def png_bytes(width: int, height: int, seed: int = 0, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """A random-noise image of the given size, encoded in `fmt`."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


class SlowEncoder:
    """Wraps a real backend; every encoder call first flags `busy` (a threading.Event), then sleeps `delay_s`
    (to fill the queue). Everything else is the wrapped backend's."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s, self.info = inner, delay_s, inner.info
        self.busy = threading.Event()

    def encode(self, images: np.ndarray) -> Any:
        self.busy.set()
        time.sleep(self.delay_s)
        return self.inner.encode(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def slow_factory(delay_s: float) -> Any:
    """A `create_app(predictor_factory=...)`: the real Predictor over the bundle's onnxruntime backend wrapped
    in SlowEncoder(backend, delay_s)."""

    def factory(settings: Any, metrics: Any) -> Any:
        from service.bundle import Bundle
        from service.pipeline.predictor import Predictor
        from service.runtime.base import create_backend

        async def build() -> Any:
            bundle = await asyncio.to_thread(Bundle.load, settings.bundle)
            backend = await asyncio.to_thread(create_backend, "onnxruntime", bundle, settings)
            return Predictor(bundle, SlowEncoder(backend, delay_s), settings, metrics)

        return build()

    return factory
