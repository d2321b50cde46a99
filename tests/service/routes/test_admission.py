"""Admission control through the real app and the real tiny bundle (a deliberately slow wrapper around the real
ONNX Runtime backend, a counting spy around the real decoder):

- queue full -> 429 + Retry-After BEFORE any decode, in a small fraction of the encoder time;
- cached images and image_ids are still served while the queue is full (and cached bytes are never re-decoded);
- the decode gate bounds concurrent decode + preprocess; requests waiting for it count against the queue budget;
- a client that disconnects while waiting for a decode slot is released (never decoded, logged as 499);
- requests cancelled by uvicorn at the drain timeout are logged as cancelled (503), without a traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from support import SlowEncoder, backend_factory, png_bytes, slow_factory, wait_status

import service.images.store as store_mod
from service.main import create_app
from service.server import DrainingServer
from service.settings import Settings

PNG = {"Content-Type": "image/png"}


class DecodeSpy:
    """Wraps the real decode_image: records the sha256 of every decoded body and the most concurrent calls;
    optionally sleeps `delay_s` or blocks on `gate` first."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.real = store_mod.decode_image
        self.delay_s, self.gate = delay_s, gate
        self.lock = threading.Lock()
        self.decoded: list[str] = []
        self.current = self.max_concurrent = 0

    def __call__(self, data: bytes, settings):
        with self.lock:
            self.decoded.append(hashlib.sha256(data).hexdigest())
            self.current += 1
            self.max_concurrent = max(self.max_concurrent, self.current)
        try:
            if self.gate is not None:
                self.gate.wait(30)
            time.sleep(self.delay_s)
            return self.real(data, settings)
        finally:
            with self.lock:
                self.current -= 1


def install(monkeypatch: pytest.MonkeyPatch, spy: DecodeSpy) -> DecodeSpy:
    """Route every decode of the image store through `spy`."""
    monkeypatch.setattr(store_mod, "decode_image", spy)
    return spy


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def timed_post(client, url: str, **kw) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = client.post(url, **kw)
    return response, time.perf_counter() - start


def real_app(tiny_bundle, delay_s: float, **overrides):
    settings = Settings(bundle=tiny_bundle, max_batch_size=1, max_batch_wait_ms=0, warmup=False, **overrides)
    return create_app(settings, backend_factory=slow_factory(delay_s))


def test_429_before_decode_while_cached_and_image_id_requests_are_served(
    tiny_bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    delay = 2.0
    spy = install(monkeypatch, DecodeSpy())
    cached, running, queued, refused = (png_bytes(40 + i, 32, seed=300 + i) for i in range(4))
    with TestClient(real_app(tiny_bundle, delay, queue_size=1)) as client, ThreadPoolExecutor(3) as pool:
        assert wait_status(client, {"ready", "failed"})["status"] == "ready"
        engine = client.app.state.service.engine
        store = engine.images
        assert client.post("/embed", content=cached, headers=PNG).status_code == 200
        engine.backend.busy.clear()
        first = pool.submit(client.post, "/embed", content=running, headers=PNG)
        wait_until(engine.backend.busy.is_set)  # the encoder is busy with `running`
        second = pool.submit(client.post, "/embed", content=queued, headers=PNG)
        wait_until(lambda: store.batcher.depth == 1)  # `queued` fills the queue (queue_size=1)

        response, elapsed = timed_post(client, "/segment?text=dog", content=refused, headers=PNG)
        assert response.status_code == 429, response.text
        assert response.json()["error_type"] == "queue_full"
        assert int(response.headers["Retry-After"]) >= 1
        assert elapsed < 0.25 * delay, f"429 took {elapsed:.3f} s; encoder takes {delay} s per image"
        assert sha(refused) not in spy.decoded, "a refused image must not be decoded"

        again, elapsed = timed_post(client, "/segment?text=dog", content=cached, headers=PNG)
        assert again.status_code == 200, again.text
        assert again.json()["cached"] is True and elapsed < 0.5 * delay
        by_id = client.post("/classify?labels=cat&labels=dog", json={"image_id": sha(cached)})
        assert by_id.status_code == 200 and by_id.json()["cached"] is True
        joined = pool.submit(client.post, "/embed", content=running, headers=PNG)  # in flight: coalesces

        assert first.result(timeout=30).status_code == 200
        assert second.result(timeout=30).status_code == 200
        assert joined.result(timeout=30).status_code == 200
        assert spy.decoded.count(sha(cached)) == 1, "cached bytes are never decoded again"
        assert spy.decoded.count(sha(running)) == 1, "in-flight bytes are never decoded again"
        assert store.batcher.reserved == 0 and store.gate.active == 0
        assert client.post("/embed", content=refused, headers=PNG).status_code == 200, "serving after 429"


def test_decode_gate_bounds_concurrent_decodes(tiny_bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = install(monkeypatch, DecodeSpy(delay_s=0.3))
    images = [png_bytes(30 + i, 30, seed=400 + i) for i in range(6)]
    app = real_app(tiny_bundle, 0.0, queue_size=16, max_concurrent_decodes=2)
    with TestClient(app) as client, ThreadPoolExecutor(len(images)) as pool:
        assert wait_status(client, {"ready", "failed"})["status"] == "ready"
        futures = [pool.submit(client.post, "/embed", content=img, headers=PNG) for img in images]
        assert [f.result(timeout=60).status_code for f in futures] == [200] * len(images)
        gate = client.app.state.service.engine.images.gate
    assert spy.max_concurrent == 2, "6 concurrent uploads, 2 decode slots: exactly 2 decode at once"
    assert gate.max_active == 2 and gate.active == 0 and gate.waiting == 0


def test_requests_waiting_for_a_decode_slot_count_against_the_queue(
    tiny_bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode_delay = 1.6
    spy = install(monkeypatch, DecodeSpy(delay_s=decode_delay))
    admitted, extra = [png_bytes(50 + i, 30, seed=500 + i) for i in range(2)], png_bytes(60, 30, seed=510)
    app = real_app(tiny_bundle, 0.0, queue_size=2, max_concurrent_decodes=1)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        assert wait_status(client, {"ready", "failed"})["status"] == "ready"
        gate = client.app.state.service.engine.images.gate
        futures = [pool.submit(client.post, "/embed", content=img, headers=PNG) for img in admitted]
        wait_until(lambda: gate.active == 1 and gate.waiting == 1)
        response, elapsed = timed_post(client, "/embed", content=extra, headers=PNG)
        assert response.status_code == 429, response.text
        assert elapsed < 0.25 * decode_delay, "refused at once, not after waiting for a decode slot"
        assert [f.result(timeout=60).status_code for f in futures] == [200, 200]
    assert sha(extra) not in spy.decoded


# --- real uvicorn: client disconnect and drain cancellation -----------------------------------------------------
def start_server(app, drain_timeout_s: float = 20.0) -> tuple[DrainingServer, threading.Thread, str]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = DrainingServer(config, app, drain_timeout_s=drain_timeout_s)
    thread = threading.Thread(target=server.run, daemon=True)  # not the main thread: no signal capture
    thread.start()
    wait_until(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def raw_post(base: str, path: str, body: bytes) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_disconnect_while_waiting_for_a_decode_slot_releases_it(
    tiny_bundle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gate = threading.Event()
    spy = install(monkeypatch, DecodeSpy(gate=gate))
    holder, leaver = png_bytes(44, 33, seed=600), png_bytes(45, 33, seed=601)
    app = real_app(tiny_bundle, 0.0, queue_size=4, max_concurrent_decodes=1)
    server, thread, base = start_server(app)
    try:
        with httpx.Client(base_url=base, timeout=30) as client, ThreadPoolExecutor(1) as pool:
            assert wait_status(client, {"ready", "failed"})["status"] == "ready"
            store = app.state.service.engine.images
            first: Future = pool.submit(client.post, "/embed", content=holder, headers=PNG)
            wait_until(lambda: spy.current == 1)  # `holder` holds the only decode slot
            sock = raw_post(base, "/embed", leaver)
            wait_until(lambda: store.gate.waiting == 1 and store.batcher.reserved == 2)
            sock.close()  # the client goes away while waiting for the slot
            wait_until(lambda: store.gate.waiting == 0 and store.batcher.reserved == 1, 5)
            gate.set()
            assert first.result(timeout=30).status_code == 200
            metrics = app.state.service.metrics
            assert metrics.sample("samclip_requests_total", endpoint="/embed", status="499") == 1
    finally:
        gate.set()
        server.should_exit = True
        thread.join(timeout=20)
    assert sha(leaver) not in spy.decoded, "a request whose client left is never decoded"
    assert store.batcher.reserved == 0
    assert any("-> 499" in r.getMessage() and "client disconnected" in r.getMessage() for r in caplog.records)


def test_drain_timeout_cancellation_is_logged_without_traceback(
    tiny_bundle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hold = threading.Event()  # set only at the end: the request cannot finish by itself
    factory = backend_factory(lambda backend: SlowEncoder(backend, hold=hold))
    app = create_app(Settings(bundle=tiny_bundle), backend_factory=factory)
    server, thread, base = start_server(app, drain_timeout_s=2.5)
    with httpx.Client(base_url=base, timeout=20) as client, ThreadPoolExecutor(1) as pool:
        assert wait_status(client, {"ready"})["status"] == "ready"
        stuck = pool.submit(client.post, "/embed", content=png_bytes(32, 24), headers=PNG)
        wait_until(lambda: app.state.service.lifecycle.inflight == 1)
        server.handle_exit(signal.SIGTERM, None)
        response = stuck.result(timeout=15)
        hold.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert response.status_code == 503, response.text
    assert response.json()["error_type"] == "not_ready" and "Retry-After" in response.headers
    messages = [r.getMessage() for r in caplog.records]
    assert not any("Exception in ASGI application" in m for m in messages), messages
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a cancelled request"
    assert any("/embed -> 503" in m and "cancelled" in m for m in messages), messages
    metrics = app.state.service.metrics
    assert metrics.sample("samclip_requests_total", endpoint="/embed", status="503") == 1
    assert metrics.sample("samclip_requests_total", endpoint="/embed", status="500") == 0


def test_disconnect_during_upload_is_a_499_without_traceback(
    tiny_bundle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = create_app(Settings(bundle=tiny_bundle))
    server, thread, base = start_server(app)
    try:
        with httpx.Client(base_url=base, timeout=20) as client:
            assert wait_status(client, {"ready"})["status"] == "ready"
            host, port = base.removeprefix("http://").split(":")
            sock = socket.create_connection((host, int(port)))
            head = (
                "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
            )
            sock.sendall(head.encode() + png_bytes(32, 24)[:50])  # then leave mid-body
            time.sleep(0.2)
            sock.close()
            metrics = app.state.service.metrics
            wait_until(
                lambda: metrics.sample("samclip_requests_total", endpoint="/embed", status="499") == 1, 5
            )
            assert client.post("/embed", content=png_bytes(32, 24), headers=PNG).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert not [r for r in caplog.records if r.exc_info], "a client leaving mid-upload is not an error"


def test_batcher_reservations_share_the_queue_budget_and_size_retry_after() -> None:
    from service.errors import QueueFull
    from service.runtime.batcher import Batcher

    release = threading.Event()

    def run_batch(items):
        release.wait(10)
        return items

    async def scenario() -> None:
        b = Batcher(run_batch, max_batch_size=1, max_batch_wait_ms=0, queue_size=2)
        await b.start()
        b.seed_estimate(3.0)
        running = asyncio.ensure_future(b.submit("run", "run", time.monotonic() + 30))
        while b.depth or not b.pending("run"):
            await asyncio.sleep(0.005)
        r1 = b.reserve()
        queued = asyncio.ensure_future(b.submit("q", "q", time.monotonic() + 30))
        await asyncio.sleep(0.01)
        assert (b.depth, b.reserved) == (1, 1)
        with pytest.raises(QueueFull) as info:
            b.reserve()
        assert info.value.headers["Retry-After"] == "6", "(1 queued + 1 reserved) x 3 s per image"
        with pytest.raises(QueueFull):
            await b.submit("new", "new", time.monotonic() + 30)
        r1.release()
        r1.release()  # idempotent
        r2 = b.reserve()
        assert b.reserved == 1
        late = asyncio.ensure_future(b.submit("late", "late", time.monotonic() + 30, reservation=r2))
        await asyncio.sleep(0.01)
        assert (b.depth, b.reserved) == (2, 0), "a reserved submit is never refused"
        release.set()
        assert [(await f).value for f in (running, queued, late)] == ["run", "q", "late"]
        await b.stop()

    asyncio.run(scenario())
