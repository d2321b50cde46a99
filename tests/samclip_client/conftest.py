"""Fixtures for the client tests: real `python -m service` processes on the committed demo bundle.

`demo_server` is shared by the module's tests (read-only use); `server_factory(env)` starts one with other
settings (tiny cache, queue of 1, API key), stopped at the end of the test.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.run import free_port, start_server, stop_server, wait_ready

ROOT = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = ROOT / "training" / "demo_bundle"


def _start(tmp: Path, env: dict[str, str] | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = tmp / f"server-{port}.log"
    proc = start_server(DEMO_BUNDLE, port, {"SAMCLIP_INTRA_OP_THREADS": "1", **(env or {})}, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 120)
    except Exception:
        stop_server(proc, 5)
        raise RuntimeError(log.read_text(errors="replace")[-4000:]) from None
    return proc, url


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a server on the demo bundle with default settings."""
    proc, url = _start(tmp_path_factory.mktemp("demo_server"), None)
    yield url
    stop_server(proc, 10)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def make(env: dict[str, str]) -> str:
        proc, url = _start(tmp_path, env)
        procs.append(proc)
        return url

    yield make
    for proc in procs:
        stop_server(proc, 10)
