"""Graceful drain: the Lifecycle state machine, the app's behaviour while draining, and DrainingServer's
SIGTERM handling on a real uvicorn server (run in a thread; the signal handler is invoked directly)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from support import SlowEncoder, backend_factory, png_bytes, wait_status

from service.lifecycle import Lifecycle, Phase
from service.main import create_app
from service.server import DrainingServer
from service.settings import Settings


def test_lifecycle_transitions() -> None:
    lc = Lifecycle()
    assert lc.phase is Phase.LOADING and not lc.ready and not lc.admit()
    lc.mark_ready()
    assert lc.ready and lc.admit() and lc.inflight == 1
    assert lc.start_drain() is True and lc.phase is Phase.DRAINING and not lc.ready
    assert lc.start_drain() is False, "a second drain request is a no-op"
    assert not lc.admit(), "nothing new is admitted while draining"
    assert lc.may_serve(admitted=True) and not lc.may_serve(admitted=False)
    lc.mark_ready()
    assert lc.phase is Phase.DRAINING, "draining never goes back to ready"
    lc.request_finished()
    lc.mark_stopped()
    assert lc.phase is Phase.STOPPED and not lc.may_serve(admitted=True)


def test_failed_load_stays_failed() -> None:
    lc = Lifecycle()
    lc.mark_failed("bundle corrupt")
    lc.mark_ready()
    assert lc.phase is Phase.FAILED and lc.reason == "bundle corrupt" and not lc.admit()


def test_wait_idle_times_out_then_succeeds() -> None:
    lc = Lifecycle()
    lc.mark_ready()
    lc.admit()

    async def scenario() -> tuple[bool, bool]:
        timed_out = await lc.wait_idle(0.05)
        asyncio.get_running_loop().call_later(0.05, lc.request_finished)
        return timed_out, await lc.wait_idle(2.0)

    assert asyncio.run(scenario()) == (False, True)


def _held_app(hold: threading.Event, **overrides: object):
    """The real app on the demo bundle whose encoder waits for `hold` (so requests stay in flight)."""
    factory = backend_factory(lambda backend: SlowEncoder(backend, hold=hold))
    return create_app(Settings(**overrides), backend_factory=factory)


def test_app_drain_finishes_in_flight_and_refuses_new_work() -> None:
    hold = threading.Event()
    app = _held_app(hold)
    image = png_bytes(32, 24)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        assert wait_status(client, {"ready"})["status"] == "ready"
        lifecycle = app.state.service.lifecycle
        in_flight = pool.submit(client.post, "/embed", content=image, headers={"Content-Type": "image/png"})
        deadline = time.monotonic() + 10
        while lifecycle.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert lifecycle.inflight == 1
        assert lifecycle.start_drain()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = client.post("/embed", content=image, headers={"Content-Type": "image/png"})
        assert refused.status_code == 503 and refused.json()["error_type"] == "not_ready"
        assert client.get("/healthz").status_code == 200, "still live while draining"
        hold.set()
        response = in_flight.result(timeout=10)
        assert response.status_code == 200, response.text
        assert lifecycle.inflight == 0


def test_draining_server_waits_for_in_flight_then_exits() -> None:
    hold = threading.Event()
    app = _held_app(hold, drain_timeout_s=20)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    server = DrainingServer(config, app, drain_timeout_s=20)
    thread = threading.Thread(target=server.run, daemon=True)  # not the main thread: no signal capture
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=20) as client, ThreadPoolExecutor(1) as pool:
        assert wait_status(client, {"ready"})["status"] == "ready"
        in_flight = pool.submit(
            client.post, "/embed", content=png_bytes(32, 24), headers={"Content-Type": "image/png"}
        )
        while app.state.service.lifecycle.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.handle_exit(signal.SIGTERM, None)
        time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=5) as other:
            assert other.get("/readyz").status_code == 503, "not ready at once, still listening"
            assert other.post("/embed?image_id=x").status_code == 503
        assert thread.is_alive() and not server.should_exit, "waits for the in-flight request"
        hold.set()
        assert in_flight.result(timeout=10).status_code == 200
    thread.join(timeout=10)
    assert not thread.is_alive(), "server exited after the drain"
    assert app.state.service.lifecycle.phase.value == "stopped"


@pytest.mark.parametrize("timeout_s", [2.5])
def test_draining_server_gives_up_after_the_timeout(timeout_s: float) -> None:
    hold = threading.Event()  # never set: the request never finishes by itself
    app = _held_app(hold)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = DrainingServer(config, app, drain_timeout_s=timeout_s)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        assert wait_status(client, {"ready"})["status"] == "ready"
        pool.submit(client.post, "/embed", content=png_bytes(32, 24), headers={"Content-Type": "image/png"})
        while app.state.service.lifecycle.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        start = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        thread.join(timeout=15)
        assert not thread.is_alive()
        assert time.monotonic() - start <= timeout_s + 1.0
