"""Graceful drain of a real `python -m service` process (uvicorn) under concurrent requests.

Issue 4: on SIGTERM the server turns /readyz to 503 at once, finishes in-flight requests, refuses new inference
with 503, and exits within the drain timeout. In-flight requests are made deterministic with slow uploads:
each sends its headers and half of its body before SIGTERM (so the server has admitted it) and the rest after.
Background threads keep normal requests flowing across the signal.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from loadtests.images import make_image  # noqa: E402

DRAIN_TIMEOUT_S = 15.0
SLOW_UPLOADS = 4
LOOP_THREADS = 3
CLOSED_CONNECTION = ("ConnectError", "RemoteProtocolError", "ReadError", "WriteError")


def open_slow_upload(port: int, body: bytes) -> http.client.HTTPConnection:
    """Start POST /segment?text=dog, sending the headers and the first half of the body only."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/segment?text=dog")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[: len(body) // 2])
    return conn


def finish_slow_upload(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.send(body[len(body) // 2 :])
    response = conn.getresponse()
    return response.status, response.read()


class Loop(threading.Thread):
    """Posts new images to /segment?text= until stopped; records (start, end, status | exception name)."""

    def __init__(self, url: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.url, self.seed = url, seed
        self.stop = threading.Event()
        self.results: list[tuple[float, float, int | str]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            count = 0
            while not self.stop.is_set():
                body = make_image(self.seed * 10_000 + count, base_size=(320, 240))
                count += 1
                start = time.monotonic()
                try:
                    status: int | str = client.post(
                        "/segment?text=cat", content=body, headers={"Content-Type": "image/jpeg"}
                    ).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.results.append((start, time.monotonic(), status))
                if isinstance(status, str):
                    return  # server gone


def test_sigterm_drains_in_flight_requests(tiny_bundle: Path, server_factory) -> None:
    proc, url, log_path = server_factory(tiny_bundle, {"SAMCLIP_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S)})
    port = int(url.rsplit(":", 1)[1])
    loops = [Loop(url, seed) for seed in range(1, LOOP_THREADS + 1)]
    for loop in loops:
        loop.start()
    deadline = time.monotonic() + 60
    while not any(loop.results for loop in loops) and time.monotonic() < deadline:
        time.sleep(0.1)  # a loop has completed a request: the server is busy with real traffic
    bodies = [make_image(500 + i, base_size=(400, 300), fmt="PNG") for i in range(SLOW_UPLOADS)]
    slow = [open_slow_upload(port, body) for body in bodies]
    time.sleep(0.5)  # let the server admit the slow uploads
    assert proc.poll() is None

    t_signal = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    ready = httpx.get(f"{url}/readyz", timeout=5)
    t_ready = time.monotonic() - t_signal
    assert ready.status_code == 503, ready.text
    assert t_ready < 1.0, f"/readyz took {t_ready:.2f} s to answer 503"
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # still live while draining

    refused = httpx.post(
        f"{url}/segment?text=dog", content=bodies[0], headers={"Content-Type": "image/png"}, timeout=10
    )
    assert refused.status_code == 503, refused.text
    assert set(refused.json()) >= {"error", "error_type", "request_id"}

    outcomes = [finish_slow_upload(conn, body) for conn, body in zip(slow, bodies, strict=True)]
    for status, payload in outcomes:
        assert status == 200, payload[:300]
        assert b'"masks"' in payload or b'"segmentation"' in payload, payload[:300]

    try:
        proc.wait(timeout=DRAIN_TIMEOUT_S + 5)
    except Exception:
        pytest.fail(f"server did not exit within the drain timeout:\n{log_path.read_text()[-3000:]}")
    exit_s = time.monotonic() - t_signal
    assert proc.returncode in (0, -signal.SIGTERM), log_path.read_text()[-3000:]
    assert exit_s < DRAIN_TIMEOUT_S + 2, f"exit took {exit_s:.1f} s"

    for loop in loops:
        loop.stop.set()
        loop.join(timeout=30)
    results = [r for loop in loops for r in loop.results]
    before = [status for start, end, status in results if end < t_signal]
    assert before and all(status == 200 for status in before), before
    # Across the signal: a request is answered 200 (admitted before the drain) or 503 (after), or cannot
    # connect once the process has exited; never a 5xx other than 503, never a dropped admitted request.
    # A request first sent after SIGTERM was never admitted: once the drain is over the server closes its
    # keep-alive connections and exits, so such a request may also see the connection close under it.
    after = [status for start, end, status in results if end >= t_signal]
    in_flight = [status for start, end, status in results if start < t_signal <= end]
    sent_late = [status for start, end, status in results if start >= t_signal]
    assert all(status in (200, 503) for status in in_flight), in_flight
    assert all(status in (200, 503, *CLOSED_CONNECTION) for status in sent_late), sent_late
    print(
        f"\ndrain: /readyz 503 after {t_ready * 1000:.0f} ms; {len(outcomes)} in-flight uploads all 200; "
        f"exit after {exit_s:.1f} s (code {proc.returncode}); loop statuses after SIGTERM {dict(Counter(map(str, after)))}"
    )
    early = [status for start, end, status in results if start < t_signal - 1.0]
    assert all(status == 200 for status in early), early
