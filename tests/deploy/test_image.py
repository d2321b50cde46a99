"""Slow: build the CPU container image from the root Dockerfile with podman and serve a tiny bundle from it.

Steps (each one a user would run, from the repository root):
  deploy/tools/make_base_image.sh           debootstrap bookworm -> podman import localhost/samclip-base:bookworm
  podman build --format docker -t TAG .     the root Dockerfile's CPU default (onnxruntime); --isolation chroot
                                            is added only where the host's OCI runtime cannot run build steps
  podman run -v BUNDLE:/models/bundle:ro --read-only --tmpfs /tmp ...   -> /readyz 200, /segment?text= a mask
Needs root, podman and debootstrap (deploy/tools/install_ci_tools.sh --system) and network access to the
Debian mirror and PyPI during the build. Prints build/run timings and the image size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from loadtests.images import image_size, make_image  # noqa: E402
from loadtests.run import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/samclip-serve:test-cpu"
BASE = "localhost/samclip-base:bookworm"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("podman") is None,
        reason="podman not installed (deploy/tools/install_ci_tools.sh --system)",
    ),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and rootful podman need root"),
]

# Ways to start a container, tried in order: hosts inside containers may lack cgroup v2 controllers (crun) or
# CAP_SYS_RESOURCE (podman's default rlimits), so fall back to runc with rlimits at or below the host's.
RUN_FLAG_CANDIDATES = [
    [],
    ["--runtime", "runc"],
    ["--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"],
]


# `podman build` as README says; chroot isolation only where the OCI runtime cannot start build containers.
BUILD_FLAG_CANDIDATES = [[], ["--isolation", "chroot"]]
OCI_RUNTIME_ERRORS = ("OCI runtime", "runc", "crun", "rlimit", "cgroup")


def sh(*cmd: str, timeout: float = 1200, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=check)


def run_flags() -> list[str]:
    for flags in RUN_FLAG_CANDIDATES:
        if sh("podman", "run", "--rm", "--no-healthcheck", *flags, BASE, "true", check=False).returncode == 0:
            return flags
    pytest.skip("podman cannot start containers on this host with any known flag set")


@pytest.fixture(scope="module")
def image() -> dict:
    timings = {}
    start = time.monotonic()
    result = sh("deploy/tools/make_base_image.sh", BASE, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    timings["base_s"] = round(time.monotonic() - start, 1)
    start = time.monotonic()
    for flags in BUILD_FLAG_CANDIDATES:
        result = sh("podman", "build", "--format", "docker", *flags, "-t", TAG, ".", check=False)
        if result.returncode == 0 or not any(word in result.stderr for word in OCI_RUNTIME_ERRORS):
            break
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    timings["build_s"] = round(time.monotonic() - start, 1)
    timings["build_flags"] = " ".join(flags) or "(none)"
    inspect = json.loads(sh("podman", "image", "inspect", TAG).stdout)[0]
    timings["size_mb"] = round(inspect["Size"] / 1e6, 1)
    return {"timings": timings, "inspect": inspect, "flags": run_flags()}


def test_image_config(image: dict) -> None:
    config = image["inspect"]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python", "-m", "service"]
    assert "SAMCLIP_BUNDLE=/models/bundle" in config["Env"]
    healthcheck = image["inspect"].get("Healthcheck") or config["Healthcheck"]  # podman: top level
    assert healthcheck["Test"][0] == "CMD" and "/healthz" in " ".join(healthcheck["Test"])
    assert not any(item.startswith("DEBIAN_FRONTEND") for item in config["Env"])
    assert not any(item.startswith("SAMCLIP_BACKEND=") for item in config["Env"])  # service default: auto
    probe = (
        "import importlib.util as u, shutil; "
        "print([m for m in ('torch', 'onnxruntime', 'fastapi') if u.find_spec(m)], "
        "[c for c in ('gcc', 'cc', 'g++', 'pip') if shutil.which(c)])"
    )
    out = sh(
        "podman",
        "run",
        "--rm",
        "--no-healthcheck",
        *image["flags"],
        "--entrypoint",
        "python",
        TAG,
        "-c",
        probe,
    ).stdout.strip()
    assert out == "['onnxruntime', 'fastapi'] []", out  # no torch, no compiler, no pip in the runtime stage


def test_container_serves_a_mask(image: dict, tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    for path in [tmp_path, bundle, *bundle.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's uid 10001
    port = free_port()
    name = f"samclip-test-{port}"
    start = time.monotonic()
    sh(
        "podman",
        "run",
        "-d",
        "--name",
        name,
        *image["flags"],
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-e",
        f"SAMCLIP_PORT={port}",
        "-e",
        "SAMCLIP_INTRA_OP_THREADS=1",
        "-e",
        "SAMCLIP_CPUS=1",
        "-v",
        f"{bundle}:/models/bundle:ro",
        TAG,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = None
        while time.monotonic() - start < 180:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=3)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        logs = sh("podman", "logs", name, check=False)
        assert ready is not None and ready.status_code == 200, (logs.stdout + logs.stderr)[-4000:]
        image["timings"]["ready_s"] = round(time.monotonic() - start, 1)

        body = make_image(7, base_size=(320, 240))
        response = httpx.post(
            f"{url}/segment?text=dog", content=body, headers={"Content-Type": "image/jpeg"}, timeout=60
        )
        assert response.status_code == 200, response.text
        payload = response.json()
        (mask,) = payload["masks"]
        assert (payload["width"], payload["height"]) == image_size(body)
        assert mask["segmentation"]["size"] == [payload["height"], payload["width"]]  # COCO RLE [H, W]
        assert isinstance(mask["segmentation"]["counts"], str) and len(mask["bbox"]) == 4
        assert sh("podman", "healthcheck", "run", name, check=False).returncode == 0

        stop_start = time.monotonic()
        sh("podman", "stop", "-t", "30", name)
        image["timings"]["stop_s"] = round(time.monotonic() - stop_start, 1)
        state = json.loads(sh("podman", "inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] in (0, 143), state  # drained and exited on SIGTERM, not killed after 30 s
        assert image["timings"]["stop_s"] < 30
    finally:
        sh("podman", "rm", "-f", name, check=False)
        print(f"\nimage timings: {image['timings']}")
