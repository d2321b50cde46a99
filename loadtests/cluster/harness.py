"""Run the scenarios: replica groups (without / with Redis), one nginx per scenario, Locust through it, faults.

Locust runs as its own process (`python -m locust ... ClickToSegmentUser`, headless) so that its gevent
monkey-patching never touches the harness; it writes one event per request (loadtests/recording.py). The
harness waits for the first request in the proxy's access log, applies the scenario's fault at `fault_at` of the
run, and scrapes every replica's /metrics before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.cluster import analysis
from loadtests.cluster.metrics import Scrape, scrape
from loadtests.cluster.procs import CHILD_POPEN, Processes
from loadtests.cluster.proxy import DEFAULT_NEXT_UPSTREAM, Proxy, ProxyLimits, start_nginx
from loadtests.cluster.scenarios import FAULTS, FaultRecord, Scenario
from loadtests.images import make_image, unique_jpeg
from loadtests.run import LOCUSTFILE, ROOT, summarize

CLIENT_DEFAULTS = {
    "SAMCLIP_LT_WEIGHT_CLICK": "1",
    "SAMCLIP_LT_WAIT_MIN": "0.05",
    "SAMCLIP_LT_WAIT_MAX": "0.3",
    "SAMCLIP_LT_CLICKS_PER_IMAGE": "8",
    "SAMCLIP_LT_PHOTO_FRACTION": "0",
}
# Replicas share this machine's cores with redis-server, nginx and Locust (N + 3 busy processes on as few as 2
# cores), so a Redis call can wait on the scheduler well past the 50 ms production default, and every timeout
# makes a replica skip the shared tier for a while (its embeds unpublished, its lookups misses): 250 ms keeps
# scheduling noise from passing for a Redis fault. A hung Redis (pause-redis) still times out.
REPLICA_DEFAULTS = {
    "SAMCLIP_INTRA_OP_THREADS": "1",
    "SAMCLIP_CPUS": "1",
    "SAMCLIP_DRAIN_TIMEOUT_S": "5",
    "SAMCLIP_LOG_LEVEL": "WARNING",
    "SAMCLIP_REDIS_TIMEOUT_S": "0.25",
}


@dataclass
class Options:
    bundle: Path
    replicas: int = 3
    duration_s: float = 20.0
    users: int = 8
    fault_at: float = 0.4
    next_upstream: str = DEFAULT_NEXT_UPSTREAM
    client_env: dict[str, str] = field(default_factory=dict)
    server_env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 120.0


def shared_tier_supported() -> bool:
    """Whether this checkout's service has the Redis tier setting (SAMCLIP_REDIS_URL)."""
    from service.settings import Settings

    return "redis_url" in Settings.model_fields


class Harness:
    """Owns the children (`procs`) across scenarios; `run(scenario)` returns that scenario's figures."""

    def __init__(self, procs: Processes, options: Options) -> None:
        self.procs = procs
        self.options = options
        self.limits = ProxyLimits.from_service_settings()
        self.redis_url: str | None = None
        self.group: bool | None = None  # the running replicas were started with Redis (True) or without

    def replica_env(self) -> dict[str, str]:
        return {"SAMCLIP_REDIS_URL": self.redis_url} if self.group and self.redis_url else {}

    def prepare(self, scenario: Scenario) -> None:
        """Replicas of the scenario's group running and ready, Redis up when it needs it (restarted after a
        fault of an earlier scenario), every killed replica restarted."""
        if scenario.redis and (self.procs.redis is None or self.procs.redis.poll() is not None):
            self.redis_url = self.procs.start_redis()
            self.group = None  # replicas must learn the new URL
        if self.group != scenario.redis or len(self.procs.replicas) != self.options.replicas:
            self.group = scenario.redis
            self.procs.start_replicas(self.options.replicas, self.replica_env(), self.options.ready_timeout_s)
        for replica in list(self.procs.replicas):
            if replica.killed:
                self.procs.restart_replica(replica.index, self.replica_env(), self.options.ready_timeout_s)

    def scrape_all(self) -> dict[int, Scrape | None]:
        return {r.index: scrape(r.url) for r in self.procs.replicas if not r.killed}

    def locust_cmd(self, host: str, csv_prefix: Path) -> list[str]:
        o = self.options
        return [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
            "-u", str(o.users), "-r", str(o.users), "-t", f"{o.duration_s:g}s", "--stop-timeout", "5",
            "--only-summary", "--loglevel", "WARNING", "--csv", str(csv_prefix), "ClickToSegmentUser",
        ]  # fmt: skip

    def run(self, scenario: Scenario) -> dict[str, Any]:
        self.prepare(scenario)
        folder = self.procs.workdir / scenario.name
        folder.mkdir(exist_ok=True)
        replicas = [{"index": r.index, "addr": r.addr, "port": r.port} for r in self.procs.replicas]
        upstreams = [r["addr"] for r in replicas]
        proxy = start_nginx(
            self.procs, scenario.name, upstreams, scenario.routing, self.limits, self.options.next_upstream
        )
        before = self.scrape_all()
        env = {
            **CLIENT_DEFAULTS,
            **self.options.client_env,
            "SAMCLIP_LT_EVENTS": str(folder / "events.jsonl"),
            "SAMCLIP_LT_RECORD": str(folder / "records.json"),
            "SAMCLIP_LT_FAILURES": str(folder / "failures.json"),
        }
        fault = self.drive(proxy, env, folder, scenario)
        after = self.scrape_all()
        if fault is not None and fault.replica is not None:
            after[fault.replica] = fault.last_scrape
        spread = fallback_spread(proxy.url) if scenario.routing == "hash" and fault is None else None
        self.procs.stop(proxy.proc)
        self.procs.others.remove(proxy.proc)
        events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        figures = analysis.analyse(events, replicas, before, after, fault)
        records = json.loads((folder / "records.json").read_text())
        figures["endpoints"] = summarize(records, max(figures["duration_s"], 1e-3))["endpoints"]
        failures = folder / "failures.json"  # Locust's failure table when the events were written
        figures["locust_failures"] = json.loads(failures.read_text()) if failures.is_file() else {}
        if spread is not None:
            figures["fallback_spread"] = spread
        return {"scenario": scenario.name, "title": scenario.title, "routing": scenario.routing,
                "redis": scenario.redis, **figures}  # fmt: skip

    def drive(
        self, proxy: Proxy, env: dict[str, str], folder: Path, scenario: Scenario
    ) -> FaultRecord | None:
        """Locust through the proxy; the scenario's fault at `fault_at` of the run after the first request."""
        log = (folder / "locust.log").open("wb")
        proc = subprocess.Popen(
            self.locust_cmd(proxy.url, folder / "locust"),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            **CHILD_POPEN,  # killed with the harness even when Ctrl-C lands before Popen returns
        )
        fault = None
        try:
            if scenario.fault is not None:
                started = wait_for_traffic(proxy.access_log, proc)
                time.sleep(
                    max(0.0, started + self.options.fault_at * self.options.duration_s - time.monotonic())
                )
                fault = FAULTS[scenario.fault](self.procs, proxy)
            rc = proc.wait(timeout=self.options.duration_s + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            if scenario.fault == "pause-redis" and self.procs.redis is not None:
                self.procs.redis.send_signal(signal.SIGCONT)
        if rc not in (0, 1):  # 1 = some requests failed (recorded); anything else: Locust itself broke
            raise RuntimeError(f"locust exited with {rc}; see {folder / 'locust.log'}")
        return fault


def wait_for_traffic(access_log: Path, proc: subprocess.Popen, timeout_s: float = 60.0) -> float:
    """time.monotonic() when the proxy logged its first request (Locust has started its users)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if access_log.is_file() and access_log.stat().st_size > 0:
            return time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"locust exited with {proc.returncode} before sending a request")
        time.sleep(0.05)
    raise TimeoutError(f"no request reached the proxy within {timeout_s:.0f} s")


def fallback_spread(proxy_url: str, requests: int = 24) -> dict[str, int]:
    """{replica addr: answers} for `requests` uploads WITHOUT X-Image-Id through the proxy: with hash routing
    they must still spread over the replicas (the proxy's per-request fallback key), not all go to one."""
    counts: dict[str, int] = {}
    base = make_image(424_242)
    with httpx.Client(timeout=30) as client:
        for i in range(requests):
            data = unique_jpeg(base, int(time.time() * 1e6) + i)
            response = client.post(f"{proxy_url}/embed", content=data, headers={"Content-Type": "image/jpeg"})
            addr = response.headers.get("X-Samclip-Upstream", "?").split(", ")[-1]
            counts[addr] = counts.get(addr, 0) + 1
    return dict(sorted(counts.items()))
