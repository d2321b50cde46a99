"""The harness's text output: one table row per scenario, fault details, the cost probe and the checks."""

from __future__ import annotations


def _counts(counts: dict) -> str:
    return " ".join(f"{status}:{n}" for status, n in counts.items()) or "-"


def scenario_table(results: list[dict]) -> str:
    head = (
        "| scenario | routing | Redis | requests | by-id 200/404 | hit ratio | encoder runs per replica | "
        "runs/image | client statuses | made by proxy | retried | service 5xx (seen/metrics) | p95 click ms |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in results:
        hit = r["hit"]
        runs = " / ".join(str(row["encoder_runs"]) for row in r["replicas"])
        click = r["endpoints"].get("POST /segment/prompt", {}).get("latency_ms_200", {}).get("p95")
        lines.append(
            f"| {r['title']} | {r['routing']} | {'yes' if r['redis'] else 'no'} | {r['requests']} | "
            f"{hit['200']}/{hit['404']} | {hit['hit_ratio']} | {runs} | {r['encoder_runs_per_image']} | "
            f"{_counts(r['status_counts'])} | {_counts(r['proxy_status_counts'])} | {r['retried_by_proxy']} | "
            f"{r['service_5xx_seen']}/{r['service_5xx_metrics']} | {click} |"
        )
    return "\n".join(lines)


def fault_lines(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        fault = r.get("fault")
        if not fault:
            continue
        after = fault["after"]
        text = (
            f"- {r['scenario']}: {fault['kind']} at {fault['at_s']} s; after it: {after['requests']} requests, "
            f"statuses {_counts(after['status_counts'])}, hit ratio {after['hit']['hit_ratio']}, "
            f"retried by the proxy {after['retried_by_proxy']}"
        )
        if fault["kind"] == "kill-replica":
            own = fault["images_of_killed_replica"]
            text += (
                f"; killed replica {fault['replica']} ({fault['addr']}) had embedded {own['images']} images, "
                f"requested {own['requests']} times after the kill: {own['200']} x 200, {own['404']} x 404"
            )
            probe = fault.get("in_flight_probe") or {}
            if probe.get("sent_to_victim"):
                text += (
                    f"; probe request in flight at the kill: {probe.get('in_flight_at_kill')}, answered "
                    f"{probe.get('status')} by {probe.get('upstream')} (made by the proxy: {probe.get('proxy_made')})"
                )
        redis_errors = sum(row["redis_errors"] for row in r["replicas"])
        lines.append(text + f"; Redis errors counted by the replicas {redis_errors}")
    return lines


def detail_lines(results: list[dict]) -> list[str]:
    """Tier lookups per replica, Locust's failure messages, the header-less spread probe."""
    lines = []
    for r in results:
        per = [f"r{row['index']} {row['lookups']}" for row in r["replicas"] if row["lookups"]]
        if per:
            lines.append(f"- {r['scenario']}: tier lookups " + "; ".join(per))
        if r.get("locust_failures"):
            lines.append(f"- {r['scenario']}: Locust failures {r['locust_failures']}")
        if "fallback_spread" in r:
            lines.append(f"- {r['scenario']}: uploads without X-Image-Id answered by {r['fallback_spread']}")
    return lines


def cost_lines(cost: dict | None) -> list[str]:
    if not cost:
        return []
    lines = [
        "",
        "Cost of a Redis hit vs a re-encode (POST /embed of the same bytes on one replica, medians):",
        "",
    ]
    lines.append(
        "| image | re-encode ms | Redis hit ms | memory hit ms | Redis/re-encode | Redis hits w/o encoder | bytes/hit |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for kind, f in cost.items():
        lines.append(
            f"| {kind} | {f['reencode']['server_ms']} ({f['reencode']['client_ms']}) | "
            f"{f['redis_hit']['server_ms']} ({f['redis_hit']['client_ms']}) | "
            f"{f['memory_hit']['server_ms']} ({f['memory_hit']['client_ms']}) | "
            f"{f['redis_over_reencode_server']} | {f['redis_hits_without_encoder']}/{f['redis_hit']['n']} | "
            f"{f['redis_bytes_per_hit']} |"
        )
    lines.append("(server-side Server-Timing total; client latency in parentheses)")
    return lines


def render(report: dict) -> str:
    out = [scenario_table(report["scenarios"]), ""]
    out += fault_lines(report["scenarios"]) + detail_lines(report["scenarios"])
    out += cost_lines(report.get("cost"))
    failed = [c for c in report["checks"] if not c["ok"]]
    out += ["", f"checks: {len(report['checks']) - len(failed)} passed, {len(failed)} failed"]
    out += [
        f"  FAILED {c['scenario']}: {c['check']}: {c['value']} (expected {c['expected']})" for c in failed
    ]
    if not report["shared_tier"]:
        out.append(
            "note: this service has no SAMCLIP_REDIS_URL setting: Redis scenarios run without a shared tier"
        )
    return "\n".join(out)
