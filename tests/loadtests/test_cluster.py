"""The multi-replica harness as CI runs it: `python -m loadtests.cluster --short` with a real redis-server, a real
nginx and 3 replicas of the demo bundle, all on 127.0.0.1 (about 90 s).

ONE test runs the harness once and checks every scenario (several test functions would run it once per xdist
worker). What it asserts, and why the tolerances are what they are, is in loadtests/cluster/checks.py; the
assertions below restate the issue-13 figures so that a failure names them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from loadtests.cluster.__main__ import build_parser, run
from loadtests.cluster.checks import MIN_HIT_RATIO, rr_tolerance
from loadtests.cluster.procs import find_tool
from loadtests.cluster.report import render

MISSING = [tool for tool in ("redis-server", "nginx") if find_tool(tool) is None]
pytestmark = [
    pytest.mark.skipif(
        bool(MISSING), reason=f"not installed: {MISSING} (deploy/tools/install_ci_tools.sh --system)"
    ),
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed"),
]
REPLICAS = 3


def test_short_cluster_harness(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--short", "--replicas", str(REPLICAS), "--json", str(tmp_path / "c.json")]
    )
    report = run(args, tmp_path / "work")
    print(render(report))
    (tmp_path / "c.json").write_text(json.dumps(report, indent=2))
    by_name = {result["scenario"]: result for result in report["scenarios"]}
    assert set(by_name) == {"rr", "hash", "rr-redis", "kill-replica", "pause-redis", "stop-redis"}

    for name, result in by_name.items():  # every scenario, both faults included
        assert result["service_5xx_seen"] == 0 and result["service_5xx_metrics"] == 0, (name, result)
        assert result["no_answer"] == 0, (name, result["status_counts"])
        assert set(result["service_status_counts"]) <= {"200", "404", "429"}, (name, result["status_counts"])
        assert result["hit"]["requests"] >= 50, (name, result["hit"])  # enough by-id requests to judge

    rr = by_name["rr"]["hit"]
    tol = rr_tolerance(rr["requests"], REPLICAS)
    assert abs(rr["hit_ratio"] - 1 / REPLICAS) <= tol, f"(a) hit ratio {rr} not 1/{REPLICAS} +- {tol:.3f}"
    failures = by_name["rr"]["locust_failures"]  # a 404 on an image_id is a Locust failure
    assert failures.get("POST /segment/prompt: CatchResponseError('HTTP 404 unknown image_id')") == rr["404"]

    assert len(by_name["hash"]["fallback_spread"]) >= 2, by_name["hash"]["fallback_spread"]
    for name in ("hash", "rr-redis", "kill-replica", "pause-redis", "stop-redis"):
        assert by_name[name]["hit"]["hit_ratio"] >= MIN_HIT_RATIO, (name, by_name[name]["hit"])
        assert not by_name[name]["proxy_status_counts"] or name == "kill-replica", by_name[name]

    kill = by_name["kill-replica"]
    assert set(kill["proxy_status_counts"]) <= {"502", "503"}, kill["status_counts"]
    after = kill["fault"]["after"]
    assert after["retried_by_proxy"] + sum(after["proxy_status_counts"].values()) > 0, (
        "kill did not reach traffic"
    )
    own = kill["fault"]["images_of_killed_replica"]
    assert own["requests"] > 0 and own["hit_ratio"] >= MIN_HIT_RATIO, f"killed replica's images: {own}"

    for name in ("pause-redis", "stop-redis"):
        errors = sum(row["redis_errors"] for row in by_name[name]["replicas"])
        assert errors > 0, f"{name}: the replicas counted no Redis error, so the fault never reached them"

    for kind, figures in report["cost"].items():  # the Redis-hit path never runs the encoder
        assert figures["redis_hits_without_encoder"] == figures["redis_hit"]["n"] > 0, (kind, figures)
    assert all(check["ok"] for check in report["checks"]), [c for c in report["checks"] if not c["ok"]]
