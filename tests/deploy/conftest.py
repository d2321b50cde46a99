"""Deploy-test fixture: a real server process on a free port (the bundle is the shared `tiny_bundle`)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.run import free_port, start_server, wait_ready


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start servers with given env; every one is stopped (SIGKILL if needed) at teardown."""
    procs: list[subprocess.Popen] = []

    def make(bundle: Path, env: dict[str, str] | None = None, ready_timeout_s: float = 120):
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        proc = start_server(bundle, port, {"SAMCLIP_INTRA_OP_THREADS": "1", **(env or {})}, log_path)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, ready_timeout_s)
        except Exception:
            raise RuntimeError(log_path.read_text(errors="replace")[-4000:]) from None
        return proc, url, log_path

    yield make
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
