"""Helpers shared by the service tests: images, readiness polling, and backend wrappers that make the real
backend slow or held (for queue, deadline, drain and disconnect tests). Everything else is real."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np


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
    """Wraps a real backend. Every encoder call after the first (the warm-up) flags `busy` (a threading.Event),
    then sleeps `delay_s`, and when `hold` is given waits until it is set. Everything else is the wrapped
    backend's."""

    def __init__(self, inner: Any, delay_s: float = 0.0, hold: threading.Event | None = None) -> None:
        self.inner, self.delay_s, self.hold, self.info = inner, delay_s, hold, inner.info
        self.busy = threading.Event()
        self.calls = 0

    def encode(self, images: np.ndarray) -> Any:
        self.calls += 1
        if self.calls > 1:
            self.busy.set()
            time.sleep(self.delay_s)
            if self.hold is not None:
                self.hold.wait(timeout=60)
        return self.inner.encode(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def backend_factory(
    wrap: Any = None, gate: threading.Event | None = None, error: Exception | None = None
) -> Any:
    """A `create_app(backend_factory=...)`: the bundle's onnxruntime backend, optionally wrapped (`wrap(b)`);
    loading first waits for `gate` (a threading.Event) and raises `error` when given."""

    def factory(bundle: Any, settings: Any, metrics: Any) -> Any:
        from service.runtime.registry import create_backend

        if gate is not None:
            gate.wait(timeout=60)
        if error is not None:
            raise error
        backend = create_backend("onnxruntime", bundle, settings, metrics)
        return wrap(backend) if wrap is not None else backend

    return factory


def slow_factory(delay_s: float, hold: threading.Event | None = None) -> Any:
    """`backend_factory` whose encoder is a SlowEncoder(delay_s, hold)."""
    return backend_factory(lambda backend: SlowEncoder(backend, delay_s, hold))


@contextlib.contextmanager
def ready_client(settings: Any, **app_kwargs: Any) -> Iterator[Any]:
    """A TestClient on `create_app(settings)`, once /readyz says ready (fails the test if the load failed)."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    with TestClient(create_app(settings, **app_kwargs)) as client:
        body = wait_status(client, {"ready", "failed"})
        assert body["status"] == "ready", body
        yield client


def encoder_runs(client: Any) -> float:
    """Images the app's encoder has run on so far (samclip_encoder_runs_total)."""
    return client.app.state.service.metrics.sample("samclip_encoder_runs_total")
