"""Shared fixtures for deploy and load tests: a tiny bundle and a real server process on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deploy_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared `tiny_bundle` (tests/conftest.py) when present, else a random-init tiny bundle exported here."""
    try:
        return Path(request.getfixturevalue("tiny_bundle"))
    except pytest.FixtureLookupError:
        pass
    pytest.importorskip("torch", reason="exporting a tiny bundle needs the export extra (torch)")
    out = tmp_path_factory.mktemp("tiny_bundle")
    code = (
        "import sys\n"
        "from model_export.build import build_model\n"
        "from model_export.config import load_config\n"
        "from model_export.export_onnx import export_bundle\n"
        "cfg = load_config('tiny')\n"
        "export_bundle(build_model(cfg, seed=0), cfg, sys.argv[1], "
        "{'random_init': True, 'seed': 0, 'sources': []}, progress=False)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=ROOT, timeout=600)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    """Poll GET {url}/readyz until 200; fail early if the process died."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/readyz not 200 within {timeout_s} s")


def start_server(bundle: Path, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python -m service --bundle B --port P` as a child process, its output in `log_path`."""
    full_env = {**os.environ, "SAMCLIP_INTRA_OP_THREADS": "1", **env}
    cmd = [sys.executable, "-m", "service", "--bundle", str(bundle), "--host", "127.0.0.1", "--port", str(port)]
    log_file = log_path.open("wb")
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start servers with given env; every one is stopped (SIGKILL if needed) at teardown."""
    procs: list[subprocess.Popen] = []

    def make(bundle: Path, env: dict[str, str] | None = None, ready_timeout_s: float = 120):
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        proc = start_server(bundle, port, env or {}, log_path)
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
