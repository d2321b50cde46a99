"""Figures of one scenario from the client's per-request events (loadtests/recording.py) and the replicas'
/metrics before and after.

- status counts as the client saw them, split by origin: answers made by the proxy (X-Samclip-Proxy-Error) and
  answers from the service; status 0 = no HTTP answer at all;
- `image_id` hit ratio = requests by image_id answered 200 / (200 + 404);
- per replica: encoder runs and 5xx from its /metrics, requests it answered (X-Samclip-Upstream), tier lookups;
- faults: the same figures for the requests answered after the fault (those in flight included), and for a
  killed replica the by-id requests after the kill for images it had embedded before (they must be served from
  Redis by the others).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from loadtests.cluster.metrics import Scrape, by_label, delta, lookups, service_5xx, total
from loadtests.cluster.scenarios import FaultRecord


def upstreams(header: str | None) -> list[str]:
    """'127.0.0.1:1, 127.0.0.1:2' -> ['127.0.0.1:1', '127.0.0.1:2'] (nginx's upstream-group name dropped)."""
    return [part.strip() for part in (header or "").split(",") if ":" in part]


def hit_ratio(events: list[dict]) -> dict[str, Any]:
    """By-image_id requests: how many, answered 200 / 404, and 200 / (200 + 404) (None when none)."""
    by_id = [e for e in events if e["by_id"]]
    hits = sum(e["status"] == 200 for e in by_id)
    misses = sum(e["status"] == 404 for e in by_id)
    ratio = round(hits / (hits + misses), 4) if hits + misses else None
    return {"requests": len(by_id), "200": hits, "404": misses, "hit_ratio": ratio}


def status_figures(events: list[dict]) -> dict[str, Any]:
    proxy = Counter(str(e["status"]) for e in events if e["proxy"])
    service = Counter(
        str(e["status"]) for e in events if not e["proxy"] and e["status"] not in (0, "dropped")
    )
    return {
        "requests": len(events),
        "status_counts": dict(sorted(Counter(str(e["status"]) for e in events).items())),
        "proxy_status_counts": dict(sorted(proxy.items())),
        "service_status_counts": dict(sorted(service.items())),
        "service_5xx_seen": sum(n for status, n in service.items() if status.startswith("5")),
        "no_answer": sum(e["status"] == 0 for e in events),
        "retried_by_proxy": sum(len(upstreams(e["upstream"])) > 1 for e in events),
        "hit": hit_ratio(events),
    }


def per_replica(
    replicas: list[dict],
    before: dict[int, Scrape | None],
    after: dict[int, Scrape | None],
    events: list[dict],
) -> list[dict]:
    """One row per replica: encoder runs, service 5xx and status counts (its /metrics), answered requests."""
    answered = Counter(upstreams(e["upstream"])[-1] for e in events if e["upstream"] and not e["proxy"])
    rows = []
    for replica in replicas:
        diff = delta(after.get(replica["index"]), before.get(replica["index"]))
        statuses = by_label(diff, "samclip_requests_total", "status")
        rows.append(
            {
                **replica,
                "encoder_runs": int(total(diff, "samclip_encoder_runs_total")),
                "requests_answered": answered.get(replica["addr"], 0),
                "service_status_counts": {k: int(v) for k, v in sorted(statuses.items()) if v},
                "service_5xx": service_5xx(diff),
                "lookups": lookups(diff),
                "redis_errors": int(total(diff, "samclip_redis_errors_total")),
                "redis_bytes_read": int(total(diff, "samclip_redis_bytes_total", direction="read")),
            }
        )
    return rows


def fault_figures(events: list[dict], fault: FaultRecord, t0: float) -> dict[str, Any]:
    after = [
        e for e in events if e["t"] + e["ms"] / 1000 >= fault.t
    ]  # answered after it (in flight included)
    figures: dict[str, Any] = {
        "kind": fault.kind,
        "at_s": round(fault.t - t0, 2),
        "after": status_figures(after),
    }
    if fault.kind == "kill-replica":
        embedded_there = {
            e["image_id"]
            for e in events
            if e["t"] < fault.t
            and not e["by_id"]
            and e["status"] == 200
            and upstreams(e["upstream"])[-1:] == [fault.addr]
        }
        later = [e for e in after if e["image_id"] in embedded_there]
        figures.update(replica=fault.replica, addr=fault.addr, images_of_killed_replica=hit_ratio(later))
        figures["in_flight_probe"] = fault.in_flight
        figures["images_of_killed_replica"]["images"] = len(embedded_there)
    return figures


def analyse(
    events: list[dict],
    replicas: list[dict],
    before: dict[int, Scrape | None],
    after: dict[int, Scrape | None],
    fault: FaultRecord | None,
) -> dict[str, Any]:
    """All figures of one scenario (see the module doc)."""
    t0 = min((e["t"] for e in events), default=0.0)
    t1 = max((e["t"] for e in events), default=0.0)
    rows = per_replica(replicas, before, after, events)
    embedded = {e["image_id"] for e in events if not e["by_id"] and e["status"] == 200}
    runs = sum(row["encoder_runs"] for row in rows)
    figures = {
        **status_figures(events),
        "duration_s": round(t1 - t0, 1),
        "images_embedded": len(embedded),
        "encoder_runs": runs,
        "encoder_runs_per_image": round(runs / len(embedded), 3) if embedded else None,
        "service_5xx_metrics": sum(row["service_5xx"] for row in rows),
        "replicas": rows,
    }
    if fault is not None:
        figures["fault"] = fault_figures(events, fault, t0)
    return figures
