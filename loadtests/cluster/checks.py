"""What each scenario must show (issue 13), as a list of named checks with the measured value.

Every scenario: 0 x 5xx from the service (seen by the client AND counted in the replicas' /metrics), every
request answered (no connection error), the service answers only 200 / 404 / 429.
- rr (a): hit ratio about 1/N: |ratio - 1/N| <= 0.05 + 3 sigma, sigma = sqrt(p (1 - p) / n) for n by-id
  requests. Why: nginx round-robin is a strict rotation, and with several users and random think times the number
  of requests between an image's /embed and a click is random, so a click lands on the embedding replica with
  probability 1/N independently: a binomial proportion (3 sigma: a false alarm in ~0.3 % of runs); the 0.05
  absorbs what is not binomial (users' requests are not perfectly interleaved in a short run).
- hash (b), rr-redis (c) and every fault: hit ratio >= 0.99; (b) also: uploads without the header still
  spread over >= 2 replicas (the proxy's fallback key).
- kill-replica: clients saw only 502/503 made by the proxy besides the service's answers; the fault reached
  traffic (retries or proxy errors > 0); the killed replica's images requested after the kill: hit ratio >= 0.99;
  the probe request in flight on it at the kill (loadtests/cluster/inflight.py) got a 200 from another replica
  when the proxy resends non-idempotent requests, else the proxy's own 502/503 (a probe that finished before
  the kill proves nothing and is only reported).
- pause-redis / stop-redis: the replicas counted Redis errors (the fault reached the service), yet 0 x 5xx.
Scenarios that need the shared tier are reported as skipped when this service has no SAMCLIP_REDIS_URL setting.
"""

from __future__ import annotations

import math
from typing import Any

SERVICE_STATUSES = {"200", "404", "429"}
PROXY_FAULT_STATUSES = {"502", "503"}
MIN_HIT_RATIO = 0.99
NEED_SHARED_TIER = {"rr-redis", "kill-replica"}  # hash routing alone keeps the others' hits in L1


def rr_tolerance(n: int, replicas: int) -> float:
    p = 1.0 / replicas
    return 0.05 + 3.0 * math.sqrt(p * (1 - p) / max(n, 1))


def _check(out: list[dict], scenario: str, name: str, ok: bool, value: Any, expected: str) -> None:
    out.append({"scenario": scenario, "check": name, "ok": bool(ok), "value": value, "expected": expected})


def check_common(out: list[dict], result: dict) -> None:
    name = result["scenario"]
    _check(
        out,
        name,
        "service 5xx seen by clients",
        result["service_5xx_seen"] == 0,
        result["service_5xx_seen"],
        "0",
    )
    _check(
        out,
        name,
        "service 5xx in /metrics",
        result["service_5xx_metrics"] == 0,
        result["service_5xx_metrics"],
        "0",
    )
    _check(out, name, "requests without an answer", result["no_answer"] == 0, result["no_answer"], "0")
    statuses = set(result["service_status_counts"])
    _check(out, name, "service statuses", statuses <= SERVICE_STATUSES, sorted(statuses), "200/404/429")
    allowed = PROXY_FAULT_STATUSES if result.get("fault", {}).get("kind") == "kill-replica" else set()
    proxy = set(result["proxy_status_counts"])
    _check(
        out,
        name,
        "statuses made by the proxy",
        proxy <= allowed,
        sorted(proxy),
        "/".join(sorted(allowed)) or "none",
    )


def check_result(result: dict, replicas: int, shared_tier: bool, resend: bool = True) -> list[dict]:
    """Checks of one scenario; `resend`: the proxy resends non-idempotent requests (nginx non_idempotent)."""
    out: list[dict] = []
    name, hit = result["scenario"], result["hit"]
    check_common(out, result)
    if name in NEED_SHARED_TIER and not shared_tier:
        _check(
            out, name, "shared tier", False, "service has no redis_url setting", "SAMCLIP_REDIS_URL supported"
        )
        return out
    ratio = hit["hit_ratio"]
    if name == "rr":
        tol = rr_tolerance(hit["requests"], replicas)
        ok = ratio is not None and abs(ratio - 1 / replicas) <= tol
        _check(out, name, "image_id hit ratio ~ 1/N", ok, ratio, f"{1 / replicas:.3f} +- {tol:.3f}")
    else:
        ok = ratio is not None and ratio >= MIN_HIT_RATIO
        _check(out, name, "image_id hit ratio", ok, ratio, f">= {MIN_HIT_RATIO}")
    if "fallback_spread" in result:
        used = len(result["fallback_spread"])
        _check(
            out,
            name,
            "uploads without X-Image-Id spread",
            used >= min(2, replicas),
            result["fallback_spread"],
            ">= 2 replicas",
        )
    fault = result.get("fault")
    if fault and fault["kind"] == "kill-replica":
        probe = fault.get("in_flight_probe") or {}
        reached = fault["after"]["retried_by_proxy"] + sum(fault["after"]["proxy_status_counts"].values())
        reached += bool(probe.get("in_flight_at_kill") and (probe["retried"] or probe["proxy_made"]))
        _check(out, name, "kill reached traffic (retries + proxy errors)", reached > 0, reached, "> 0")
        if probe.get("in_flight_at_kill"):
            want = {200} if resend else {502, 503}
            ok = probe["status"] in want and (probe["status"] == 200 or probe["proxy_made"])
            expected = "200 from another replica" if resend else "502/503 made by the proxy"
            _check(out, name, "request in flight at the kill", ok, probe, expected)
        own = fault["images_of_killed_replica"]
        ok = own["requests"] > 0 and own["hit_ratio"] is not None and own["hit_ratio"] >= MIN_HIT_RATIO
        _check(out, name, "killed replica's images served by others", ok, own, f">= {MIN_HIT_RATIO}")
    if fault and fault["kind"] in ("pause-redis", "stop-redis") and shared_tier:
        errors = sum(row["redis_errors"] for row in result["replicas"])
        _check(out, name, "Redis errors counted by the replicas", errors > 0, errors, "> 0")
    return out


def check_all(results: list[dict], replicas: int, shared_tier: bool, next_upstream: str = "") -> list[dict]:
    resend = "non_idempotent" in next_upstream
    return [check for result in results for check in check_result(result, replicas, shared_tier, resend)]
