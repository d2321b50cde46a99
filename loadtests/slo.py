"""p95 latency SLOs per endpoint, checked on a runner summary (loadtests/run.py `--slo`, `--slo-file`).

A threshold names an endpoint as in the summary ("POST /embed"), without the method ("/embed"), or "*" (every
endpoint the run measured; an explicit name wins over "*"). The measured value is the p95 latency of the
endpoint's ACCEPTED (200) answers: rejections (429) are fast by design and must not make a slow endpoint pass;
error counts have their own flags. An SLO on an endpoint with no 200 answer in the run is violated ("not
measured"): a run that shows nothing cannot show the objective is met.
"""

from __future__ import annotations

import json
from pathlib import Path


def parse_slos(pairs: list[str], files: list[Path] = ()) -> dict[str, float]:
    """['/embed=2000', '*=500'] and JSON files {"/embed": 2000} -> {endpoint: p95 threshold in ms}."""
    slos: dict[str, float] = {}
    for path in files:
        slos.update({str(k): float(v) for k, v in json.loads(Path(path).read_text()).items()})
    for pair in pairs:
        name, sep, value = pair.rpartition("=")
        if not sep or not name:
            raise SystemExit(f"--slo expects ENDPOINT=MS, got {pair!r}")
        slos[name.strip()] = float(value)
    return slos


def _match(endpoint: str, slos: dict[str, float]) -> float | None:
    """Threshold for a summary endpoint name like 'POST /embed' (exact name, then without method, then '*')."""
    path = endpoint.split(" ", 1)[-1]
    for key in (endpoint, path):
        if key in slos:
            return slos[key]
    return slos.get("*")


def check_slos(summary: dict, slos: dict[str, float]) -> list[dict]:
    """One check per endpoint with a threshold: {"endpoint", "p95_ms_threshold", "p95_ms", "ok"}."""
    endpoints = summary["endpoints"]
    checks = []
    for name, endpoint in endpoints.items():
        if name.startswith("ARRIVAL "):  # dropped arrivals: not an endpoint
            continue
        threshold = _match(name, slos)
        if threshold is not None:
            p95 = endpoint["latency_ms_200"]["p95"]
            checks.append(
                {
                    "endpoint": name,
                    "p95_ms_threshold": threshold,
                    "p95_ms": p95,
                    "ok": p95 is not None and p95 <= threshold,
                }
            )
    covered = {check["endpoint"] for check in checks} | {name.split(" ", 1)[-1] for name in endpoints}
    for key, threshold in slos.items():
        if key != "*" and key not in covered:
            checks.append({"endpoint": key, "p95_ms_threshold": threshold, "p95_ms": None, "ok": False})
    return checks


def markdown(checks: list[dict]) -> str:
    if not checks:
        return ""
    lines = ["", "| SLO (p95 of 200s) | threshold ms | measured ms | verdict |", "|---|---|---|---|"]
    for check in checks:
        measured = "not measured" if check["p95_ms"] is None else check["p95_ms"]
        verdict = "ok" if check["ok"] else "VIOLATED"
        lines.append(f"| {check['endpoint']} | {check['p95_ms_threshold']} | {measured} | {verdict} |")
    return "\n".join(lines) + "\n"
