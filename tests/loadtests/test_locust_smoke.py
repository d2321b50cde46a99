"""Locust smoke runs (each <= 60 s) of loadtests/run.py against a real server on the tiny bundle.

- below capacity: a few users with think time; every request must succeed (no 5xx, no 429, no connection error);
- overload: many users without think time and a 2-slot queue; 429s must appear and come back faster than
  accepted requests, accepted requests must succeed, and there must be zero 5xx.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from loadtests import run

# Locust runs in a subprocess; importing it here would monkey-patch this process with gevent (and break
# pytest-xdist workers), so only check that it is installed.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed")


def run_scenario(bundle: Path, out: Path, *args: str) -> tuple[int, dict]:
    code = run.main(
        ["--bundle", str(bundle), "--out", str(out), "--server-env", "SAMCLIP_INTRA_OP_THREADS=1", *args]
    )
    summary = json.loads((out / "summary.json").read_text())
    print(json.dumps({k: summary[k] for k in ("requests", "throughput_rps", "status_counts")}))
    print((out / "summary.md").read_text())
    for name in ("locust_stats.csv", "locust_failures.csv", "report.html", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    return code, summary


def test_smoke_below_capacity(tiny_bundle: Path, tmp_path: Path) -> None:
    code, summary = run_scenario(
        tiny_bundle,
        tmp_path / "smoke",
        "--users", "3", "--spawn-rate", "3", "--duration", "20s", "--fail-on-errors",
        "--client-env", "SAMCLIP_LT_WAIT_MIN=0.5", "--client-env", "SAMCLIP_LT_WAIT_MAX=1.5",
        "--client-env", "SAMCLIP_LT_WEIGHT_CLICK=1", "--client-env", "SAMCLIP_LT_WEIGHT_TEXT=1",
        "--client-env", "SAMCLIP_LT_WEIGHT_CLASSIFY=1",
    )  # fmt: skip
    counts = summary["status_counts"]
    assert summary["errors_5xx"] == 0 and counts.get("0", 0) == 0, counts
    assert set(counts) <= {"200", "404"}, f"failed requests below capacity: {counts}"
    assert counts.get("200", 0) >= 6, counts
    assert code == 0
    assert summary["server_exit_code"] in (0, -15)  # drained and exited on SIGTERM
    endpoints = set(summary["endpoints"])
    assert {"POST /embed", "POST /segment/prompt", "POST /segment?text=", "POST /classify"} <= endpoints, (
        endpoints
    )


def test_smoke_overload_answers_429_fast(tiny_bundle: Path, tmp_path: Path) -> None:
    code, summary = run_scenario(
        tiny_bundle, tmp_path / "overload", "--scenario", "overload", "--users", "24", "--duration", "25s",
        "--fail-on-5xx",
    )  # fmt: skip
    counts = summary["status_counts"]
    assert summary["errors_5xx"] == 0 and counts.get("0", 0) == 0, counts
    assert counts.get("429", 0) > 0, f"no 429 under overload: {counts}"
    assert counts.get("200", 0) > 0, f"nothing accepted under overload: {counts}"
    assert set(counts) <= {"200", "429"}, counts
    assert code == 0
    for name, endpoint in summary["endpoints"].items():
        rejected, accepted = endpoint["latency_ms_429"]["p50"], endpoint["latency_ms_200"]["p50"]
        if rejected is not None and accepted is not None:
            assert rejected < accepted, f"{name}: 429 p50 {rejected} ms not faster than 200 p50 {accepted} ms"
