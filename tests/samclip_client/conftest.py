"""Fixtures for the client tests: real `python -m service` processes on the committed demo bundle.

`demo_server` is shared by the module's tests (read-only use); `server_factory(env)` starts one with other
settings (tiny cache, queue of 1, API key), stopped at the end of the test.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import start_demo_server

from loadtests.run import stop_server


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a server on the demo bundle with default settings."""
    proc, url = start_demo_server(tmp_path_factory.mktemp("demo_server"), None)
    yield url
    stop_server(proc, 10)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def make(env: dict[str, str]) -> str:
        proc, url = start_demo_server(tmp_path, env)
        procs.append(proc)
        return url

    yield make
    for proc in procs:
        stop_server(proc, 10)
