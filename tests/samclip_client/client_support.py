"""Helpers of the client tests: server metrics, generated scenes as PNG files, and a scripted HTTP server."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from loadtests.run import serve_ready, start_server, stop_server, wait_ready
from training.data.shapes import make_scene

ROOT = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = ROOT / "training" / "demo_bundle"


def start_demo_server(
    tmp: Path, env: dict[str, str] | None, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    """`python -m service` on the demo bundle (one intra-op thread, `env` added), ready; (process, URL)."""
    env = {"SAMCLIP_INTRA_OP_THREADS": "1", **(env or {})}
    if port is None:
        return serve_ready(DEMO_BUNDLE, env, tmp)
    log = tmp / f"server-{port}-{time.monotonic_ns()}.log"
    proc = start_server(DEMO_BUNDLE, port, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 120)
    except Exception:
        stop_server(proc, 5)
        raise RuntimeError(log.read_text(errors="replace")[-4000:]) from None
    return proc, url


def requests_total(url: str, endpoint: str, status: int) -> float:
    """samclip_requests_total{endpoint, status} of the server at `url` (0 when never counted)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "samclip_requests_total" and sample.labels == {
                "endpoint": endpoint,
                "status": str(status),
            }:
                return sample.value
    return 0.0


def scene_image(seed: int, size: int = 128) -> np.ndarray:
    """(size, size, 3) uint8 RGB of generated scene `seed` (2-4 coloured shapes)."""
    return make_scene(seed, size=size, min_objects=2, max_objects=4).image


def write_pngs(folder: Path, seeds: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"scene_{seed}.png"
        Image.fromarray(scene_image(seed)).save(path)
        paths.append(path)
    return paths


@dataclass
class Seen:
    """One request the scripted server received."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    """Answers to send in order: (status, headers, JSON body); then `default` for every further request."""

    answers: list[tuple[int, dict[str, str], object]] = field(default_factory=list)
    default: tuple[int, dict[str, str], object] = (200, {}, {})
    delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


def image_json(image_id: str, **extra: object) -> dict:
    return {"image_id": image_id, "width": 4, "height": 3, "cached": False, **extra}


@contextmanager
def scripted_server(script: Script) -> Iterator[str]:
    """A real HTTP server (127.0.0.1, free port, a thread per request) answering every POST/GET from `script`
    (a callable payload is called with the request's Seen); yields its URL."""
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                script.seen.append(Seen(time.monotonic(), self.path, dict(self.headers), body))
                status, headers, payload = script.answers.pop(0) if script.answers else script.default
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            time.sleep(script.delay_s)
            with lock:
                script.in_flight -= 1
            if callable(payload):
                payload = payload(script.seen[-1])
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = _answer  # noqa: N815 (http.server naming)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
