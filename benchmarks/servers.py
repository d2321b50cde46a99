"""`python -m service` processes for the benchmarks: started together, ready when /readyz is 200, stopped with
SIGTERM (used by benchmarks/service_latency.py and benchmarks/cpu_encoder.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    bundle: Path, backend: str | None, port: int, startup_timeout_s: float, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`python -m service` in a subprocess; yields its base URL once /readyz is 200; SIGTERM on exit.
    backend None: the server's default (no SAMCLIP_BACKEND, no --backend); env: extra SAMCLIP_* settings."""
    with running_servers(bundle, backend, [(port, env or {})], startup_timeout_s) as (url,):
        yield url


@contextlib.contextmanager
def running_servers(
    bundle: Path, backend: str | None, servers: list[tuple[int, dict[str, str]]], startup_timeout_s: float
) -> Iterator[list[str]]:
    """Several `python -m service` processes (port, extra env each), started together; yields their URLs once
    every /readyz is 200; SIGTERM to all on exit."""
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(_spawned(bundle, backend, port, env)) for port, env in servers]
        for proc, url, log in procs:
            _wait_ready(proc, url, startup_timeout_s, log)
        yield [url for _, url, _ in procs]


@contextlib.contextmanager
def _spawned(bundle: Path, backend: str | None, port: int, extra: dict[str, str]) -> Iterator[tuple]:
    env = {**os.environ, "SAMCLIP_REQUEST_TIMEOUT_S": "1800", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "service", "--bundle", str(bundle), "--port", str(port)]
    cmd += ["--log-level", "WARNING"]
    if backend is not None:
        env["SAMCLIP_BACKEND"] = backend
        cmd += ["--backend", backend]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc, f"http://127.0.0.1:{port}", log
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, log: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read()[-3000:].decode(errors="replace")
            raise RuntimeError(f"server exited with {proc.returncode} before ready:\n{tail}")
        with contextlib.suppress(httpx.TransportError):
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            if response.json().get("status") == "failed":
                raise RuntimeError(f"server failed to load: {response.json().get('reason')}")
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s")
