"""The published contract is exact: schemathesis (`st run --checks all`, every phase) against a real server on
the demo bundle finds no failure of any kind — no 5xx, no schema-valid request rejected, no schema-invalid
request accepted, every response conforming to /openapi.json. Valid images and mask prompts come from the
generators in tests/service/schemathesis_hooks.py. Example count: SAMCLIP_ST_EXAMPLES (default 100, ~1 min)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtests.run import serve_ready, stop_server
from service.settings import DEFAULT_BUNDLE_DIR

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent.parent
ST = shutil.which("st", path=str(Path(sys.executable).parent))
LIMITS = {  # small limits keep generated requests cheap; the schema states them, so they stay exact
    "SAMCLIP_MAX_LABELS": "6",
    "SAMCLIP_MAX_TEXTS": "4",
    "SAMCLIP_MAX_NEW_TEXTS": "6",  # >= max_labels: the runtime cap on NEW texts is not part of the schema
    "SAMCLIP_MAX_PROMPTS": "4",
    "SAMCLIP_MAX_POINTS_PER_PROMPT": "4",
    "SAMCLIP_QUEUE_SIZE": "512",  # no 429 under the test's own load
    "SAMCLIP_REQUEST_TIMEOUT_S": "120",  # no 504 on a loaded CI machine
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SAMCLIP_")}
    try:
        env = {**LIMITS, "SAMCLIP_LOG_LEVEL": "WARNING"}
        proc, url = serve_ready(DEFAULT_BUNDLE_DIR, env, tmp_path_factory.mktemp("contract"))
    finally:
        os.environ.update(saved)
    yield url
    stop_server(proc, 30)


@pytest.mark.skipif(ST is None, reason="schemathesis is not installed (dev extra)")
def test_schemathesis_finds_no_failure_of_any_kind(server: str, tmp_path: Path) -> None:
    grid = 4 * httpx.get(f"{server}/info").json()["bundle"]["embed_grid"]
    examples = os.environ.get("SAMCLIP_ST_EXAMPLES", "100")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "SAMCLIP_MASK_GRID": str(grid)}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    cmd = [ST, "run", f"{server}/openapi.json", "--checks", "all", "--max-examples", examples]
    cmd += ["--request-timeout", "120", "--warnings", "off", "--seed", "20261202"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) >= 200, summary
    assert re.search(r"Tested: (9|1\d)\b", summary), summary
