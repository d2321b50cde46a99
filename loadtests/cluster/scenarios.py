"""The harness scenarios: routing, shared tier, fault.

(a) `rr`: round-robin, no Redis: an image lives on the one replica that embedded it, so a request by
    `image_id` reaches it with probability 1/N.
(b) `hash`: consistent hash on X-Image-Id, no Redis: every request about an image reaches the same replica.
(c) `rr-redis`: round-robin with the shared Redis tier: any replica finds any embedded image in Redis.
Faults (hash routing + Redis, the configuration the chart recommends):
- `kill-replica`: `kill -9` of the replica with the most recent embeds, at `fault_at` of the run, while a probe
  request is in flight on it. Its images must still be served (from Redis) by the replicas their keys move to;
  clients may see the proxy's own retryable 502/503, never a 5xx from the service.
- `pause-redis`: redis-server SIGSTOPped (a hung Redis: connections open, no answers) for the rest of the run,
  then SIGCONT. The service's short Redis timeouts must keep serving (L1 + encode), 0 x 5xx.
- `stop-redis`: redis-server killed (SIGKILL) mid-run: serving continues from L1 + encode, 0 x 5xx.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtests.cluster.inflight import InFlightProbe
from loadtests.cluster.metrics import Scrape, scrape
from loadtests.cluster.procs import Processes
from loadtests.cluster.proxy import Proxy


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    routing: str  # "round_robin" | "hash"
    redis: bool
    fault: str | None = None


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("rr", "(a) round-robin, no Redis", "round_robin", False),
        Scenario("hash", "(b) hash on X-Image-Id, no Redis", "hash", False),
        Scenario("rr-redis", "(c) round-robin + Redis", "round_robin", True),
        Scenario(
            "kill-replica", "fault: kill -9 of one replica (hash + Redis)", "hash", True, "kill-replica"
        ),
        Scenario("pause-redis", "fault: Redis hung, SIGSTOP (hash + Redis)", "hash", True, "pause-redis"),
        Scenario("stop-redis", "fault: Redis killed mid-run (hash + Redis)", "hash", True, "stop-redis"),
    )
}
DEFAULT_SCENARIOS = ["rr", "hash", "rr-redis", "kill-replica", "pause-redis", "stop-redis"]


def ordered(names: list[str]) -> list[Scenario]:
    """Scenarios in the canonical order (no-Redis group first, Redis faults last: stopping Redis ends it)."""
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; known: {list(SCENARIOS)}")
    return [scenario for name, scenario in SCENARIOS.items() if name in names]


@dataclass
class FaultRecord:
    kind: str
    t: float  # unix time the fault was applied
    replica: int | None = None  # kill-replica: index of the killed replica
    addr: str | None = None  # kill-replica: its 127.0.0.1:PORT
    last_scrape: Scrape | None = None  # kill-replica: its /metrics just before the kill
    in_flight: dict | None = None  # kill-replica: loadtests/cluster/inflight.py probe result


def recent_embeds(access_log: Path, window_s: float = 2.0) -> Counter:
    """{replica addr: successful POST /embed it answered in the last `window_s`} from the proxy's access log
    (format in loadtests/cluster/proxy.py: `$msec $status "$request" key=... pool=... upstream=A[, B] ...`)."""
    now, counts = time.time(), Counter()
    for line in access_log.read_text().splitlines():
        parts = line.split(" ", 2)
        if (
            len(parts) == 3
            and parts[1] == "200"
            and '"POST /embed ' in line
            and float(parts[0]) >= now - window_s
        ):
            upstream = line.split(" upstream=", 1)[1].split(" upstream_status=", 1)[0]
            counts[upstream.split(", ")[-1]] += 1
    return counts


def kill_replica(procs: Processes, proxy: Proxy, lead_s: float = 0.1) -> FaultRecord:
    """kill -9 of the replica that embedded the most images in the last 2 s (their users are still clicking,
    so the run shows whether the other replicas serve them), from the proxy's access log; `lead_s` after an
    in-flight probe request was sent to it (loadtests/cluster/inflight.py)."""
    recent = recent_embeds(proxy.access_log)
    alive = [r for r in procs.replicas if not r.killed]
    victim = max(alive, key=lambda r: recent.get(r.addr, 0))
    probe = InFlightProbe(proxy.url, victim.addr)
    if probe.start():
        time.sleep(lead_s)
    last = scrape(victim.url)
    record = FaultRecord("kill-replica", time.time(), victim.index, victim.addr, last)
    procs.kill_replica(victim.index)
    record.in_flight = probe.finish(record.t)
    return record


def signal_redis(procs: Processes, sig: int, kind: str) -> FaultRecord:
    if procs.redis is None:
        raise RuntimeError(f"{kind}: no redis-server running")
    record = FaultRecord(kind, time.time())
    if sig == signal.SIGKILL:
        procs.stop_redis(signal.SIGKILL)
    else:
        procs.redis.send_signal(sig)
    return record


FAULTS: dict[str, Callable[[Processes, Proxy], FaultRecord]] = {
    "kill-replica": kill_replica,
    "pause-redis": lambda procs, _: signal_redis(procs, signal.SIGSTOP, "pause-redis"),
    "stop-redis": lambda procs, _: signal_redis(procs, signal.SIGKILL, "stop-redis"),
}
