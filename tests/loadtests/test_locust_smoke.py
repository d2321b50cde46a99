"""Locust smoke runs (each <= 60 s) of loadtests/run.py against a real server on the tiny bundle.

- below capacity: a few users with think time (every user class, photos included); every request must succeed
  (no 5xx, no 429, no connection error); the p95 SLO check passes with generous thresholds and fails with
  thresholds below the measured p95;
- overload: many users without think time and a 2-slot queue; 429s must appear and come back faster than
  accepted requests, accepted requests must succeed, there must be zero 5xx, and after a 429 a user sends
  nothing before its Retry-After has passed;
- constant arrival: one open-loop user sends `rate x duration` requests whatever the latency.
"""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import pytest

from loadtests import run, slo

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
        "--users", "4", "--spawn-rate", "4", "--duration", "20s", "--fail-on-errors", "--slo", "*=60000",
        "--client-env", "SAMCLIP_LT_WAIT_MIN=0.5", "--client-env", "SAMCLIP_LT_WAIT_MAX=1.5",
        "--client-env", "SAMCLIP_LT_WEIGHT_CLICK=1", "--client-env", "SAMCLIP_LT_WEIGHT_TEXT=1",
        "--client-env", "SAMCLIP_LT_WEIGHT_CLASSIFY=1", "--client-env", "SAMCLIP_LT_WEIGHT_REFINE=1",
        "--client-env", "SAMCLIP_LT_PHOTO_FRACTION=0.3",
    )  # fmt: skip
    counts = summary["status_counts"]
    assert summary["errors_5xx"] == 0 and counts.get("0", 0) == 0, counts
    assert set(counts) == {"200"}, f"failed requests below capacity: {counts}"
    assert counts["200"] >= 8, counts
    assert code == 0
    assert summary["server_exit_code"] in (0, -15)  # drained and exited on SIGTERM
    endpoints = set(summary["endpoints"])
    expected = {"POST /embed", "POST /segment/prompt", "POST /segment?text=", "POST /classify"}
    assert expected | {"POST /segment/refine?text="} <= endpoints, endpoints
    assert summary["slo"] and all(check["ok"] for check in summary["slo"]), summary["slo"]
    # The same summary against thresholds below what was measured: every endpoint violates, and an SLO on an
    # endpoint the run never measured is violated too ("not measured").
    tight = {name: ep["latency_ms_200"]["p95"] * 0.5 for name, ep in summary["endpoints"].items()}
    checks = slo.check_slos(summary, {**tight, "/segment/everything": 1e9})
    assert len(checks) == len(tight) + 1 and not any(check["ok"] for check in checks), checks


def test_smoke_overload_answers_429_fast_and_users_honour_retry_after(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    events_path = tmp_path / "events.jsonl"
    code, summary = run_scenario(
        tiny_bundle, tmp_path / "overload", "--scenario", "overload", "--users", "24", "--duration", "25s",
        "--fail-on-5xx", "--client-env", f"SAMCLIP_LT_EVENTS={events_path}",
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
    by_user: dict[int, list[dict]] = defaultdict(list)
    for line in events_path.read_text().splitlines():
        event = json.loads(line)
        by_user[event["user"]].append(event)
    honoured = 0
    for events in by_user.values():
        events.sort(key=lambda e: e["t"])
        for event, following in zip(events, events[1:], strict=False):
            if event["status"] == 429:
                assert event["retry_after"] is not None, "429 without Retry-After"
                resume = event["t"] + event["ms"] / 1000 + float(event["retry_after"])
                assert following["t"] >= resume - 0.01, (event, following)
                honoured += 1
    assert honoured > 0


def test_constant_arrival_rate_is_open_loop(tiny_bundle: Path, tmp_path: Path) -> None:
    rate, seconds = 3.0, 12
    code, summary = run_scenario(
        tiny_bundle, tmp_path / "arrival", "--scenario", "arrival", "--rate", str(rate),
        "--duration", f"{seconds}s", "--arrival-op", "embed", "--fail-on-5xx",
    )  # fmt: skip
    assert code == 0, summary["status_counts"]
    assert set(summary["endpoints"]) == {"POST /embed"}, summary["endpoints"]
    sent = summary["requests"]  # arrivals are due at k / rate for k = 0, 1, ... < rate x seconds
    assert abs(sent - rate * seconds) <= 3, f"{sent} arrivals in {seconds} s at {rate}/s"
