"""Run a Locust load test against samclip-serve and write CSV, Locust's HTML report and a summary.

    python -m loadtests.run --bundle bundles/tiny --users 8 --spawn-rate 4 --duration 30s --out loadtests/out/base
    python -m loadtests.run --host http://10.0.0.5:8000 --users 64 --duration 2m --out loadtests/out/remote
    python -m loadtests.run --bundle bundles/tiny --scenario overload --out loadtests/out/overload
    python -m loadtests.run --bundle bundles/tiny --scenario arrival --rate 4 --duration 60s --slo '*=2000'

With --bundle it starts `python -m service --bundle B` on a free port (settings via --server-env KEY=VALUE,
e.g. SAMCLIP_QUEUE_SIZE=2), waits for /readyz, runs Locust headless, then stops the server with SIGTERM.
`--scenario overload` defaults to a small queue, many users and no wait time, so the queue overflows.
`--scenario arrival` runs ONE open-loop ConstantArrivalUser at `--rate` requests/s (`--arrival-op`), the load
model to measure latency at a fixed offered load (loadtests/locustfile.py explains why not constant_throughput).

Outputs in --out: locust_stats.csv, locust_failures.csv, locust_stats_history.csv (Locust's CSVs),
report.html (Locust's HTML report), records.json (latency per endpoint and status), summary.json and
summary.md (throughput, p50/p95/p99 per endpoint for all / accepted / 429 answers, error counts by status, SLO
checks). Exit code: 0, or 1 when an SLO (`--slo ENDPOINT=MS`, `--slo-file`; p95 of the 200 answers, see
loadtests/slo.py) is violated, or with --fail-on-5xx / --fail-on-errors when the run shows them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from loadtests import slo

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
OVERLOAD_SERVER_ENV = {"SAMCLIP_QUEUE_SIZE": "2", "SAMCLIP_MAX_BATCH_SIZE": "2"}
OVERLOAD_CLIENT_ENV = {
    "SAMCLIP_LT_WAIT_MIN": "0",
    "SAMCLIP_LT_WAIT_MAX": "0.05",
    "SAMCLIP_LT_WEIGHT_CLICK": "0",
    "SAMCLIP_LT_WEIGHT_TEXT": "3",
    "SAMCLIP_LT_WEIGHT_CLASSIFY": "1",
    "SAMCLIP_LT_WEIGHT_REFINE": "1",
}
ARRIVAL_CLIENT_ENV = {
    **{f"SAMCLIP_LT_WEIGHT_{name}": "0" for name in ("CLICK", "TEXT", "CLASSIFY", "REFINE")},
    "SAMCLIP_LT_WEIGHT_ARRIVAL": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> None:
    """Poll GET {url}/readyz until 200; raise if the process exits first or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/readyz was not 200 within {timeout_s:.0f} s")


def start_server(
    bundle: Path, port: int, env: dict[str, str], log_path: Path, popen_kwargs: dict | None = None
) -> subprocess.Popen:
    """`python -m service --bundle B --host 127.0.0.1 --port P` as a child process logging to `log_path`
    (`popen_kwargs`: extra subprocess.Popen arguments, e.g. start_new_session)."""
    cmd = [
        sys.executable,
        "-m",
        "service",
        "--bundle",
        str(bundle),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            **(popen_kwargs or {}),
        )


def serve_ready(
    bundle: Path, env: dict[str, str], log_dir: Path, timeout_s: float = 120
) -> tuple[subprocess.Popen, str]:
    """`start_server` on a free port, then `wait_ready`; (process, base URL). On failure the server is stopped
    and the error carries the tail of its log."""
    port = free_port()
    log = log_dir / f"server-{port}-{time.monotonic_ns()}.log"
    proc = start_server(bundle, port, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s)
    except Exception:
        stop_server(proc, 10)
        raise RuntimeError(log.read_text(errors="replace")[-4000:]) from None
    return proc, url


def stop_server(proc: subprocess.Popen, timeout_s: float = 60) -> int:
    """SIGTERM (graceful drain), SIGKILL if it does not exit within `timeout_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_locust(host: str, args: argparse.Namespace, env: dict[str, str]) -> int:
    """Locust headless; returns its exit code (1 when any request failed, which includes 429s)."""
    out: Path = args.out
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.duration,
        "--stop-timeout",
        "10",
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    with (out / "locust.log").open("wb") as log_file:
        return subprocess.run(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT, check=False
        ).returncode


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(max(values)), 1),
    }


def summarize(records: dict[str, dict[str, list[float]]], duration_s: float) -> dict:
    """records: {"POST /embed": {"200": [ms, ...], "429": [...]}} -> summary dict (latencies in ms)."""
    endpoints = {}
    totals: dict[str, int] = {}
    for name, by_status in sorted(records.items()):
        every = [ms for values in by_status.values() for ms in values]
        accepted = by_status.get("200", [])
        counts = {status: len(values) for status, values in sorted(by_status.items())}
        for status, count in counts.items():
            totals[status] = totals.get(status, 0) + count
        endpoints[name] = {
            "requests": len(every),
            "throughput_rps": round(len(every) / duration_s, 2),
            "ok_rps": round(len(accepted) / duration_s, 2),
            "status_counts": counts,
            "latency_ms": percentiles(every),
            "latency_ms_200": percentiles(accepted),
            "latency_ms_429": percentiles(by_status.get("429", [])),
        }
    total = sum(totals.values())
    return {
        "duration_s": round(duration_s, 1),
        "requests": total,
        "throughput_rps": round(total / duration_s, 2) if duration_s else 0.0,
        "ok_rps": round(totals.get("200", 0) / duration_s, 2) if duration_s else 0.0,
        "status_counts": dict(sorted(totals.items())),
        "errors_5xx": sum(count for status, count in totals.items() if status.startswith("5")),
        "errors_other": sum(
            count
            for status, count in totals.items()
            if status not in {"200", "429"} and not status.startswith("5")
        ),  # 404 (unknown image_id), 4xx, "0" (no answer), "dropped" (open-loop arrival not sent)
        "endpoints": endpoints,
    }


def markdown(summary: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"{summary['requests']} requests in {summary['duration_s']} s: {summary['throughput_rps']} req/s, "
        f"{summary['ok_rps']} OK req/s; status counts {summary['status_counts']}; "
        f"5xx: {summary['errors_5xx']}.",
        "",
        "| endpoint | requests | ok req/s | statuses | p50 ms | p95 ms | p99 ms | 200 p95 ms | 429 p50 ms | 429 p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ep in summary["endpoints"].items():
        lat, ok, rej = ep["latency_ms"], ep["latency_ms_200"], ep["latency_ms_429"]
        lines.append(
            f"| {name} | {ep['requests']} | {ep['ok_rps']} | {ep['status_counts']} | {lat['p50']} | "
            f"{lat['p95']} | {lat['p99']} | {ok['p95']} | {rej['p50']} | {rej['p99']} |"
        )
    return "\n".join(lines) + "\n"


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--bundle", type=Path, help="start a local server on this bundle")
    target.add_argument("--host", help="target a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--scenario", choices=["normal", "overload", "arrival"], default="normal")
    parser.add_argument(
        "--users", type=int, default=None, help="concurrent users (normal 8, overload 48, arrival 1)"
    )
    parser.add_argument("--rate", type=float, default=2.0, help="arrival: requests per second (open loop)")
    parser.add_argument("--arrival-op", choices=["segment", "classify", "refine", "embed"], default="segment")
    parser.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="ENDPOINT=MS",
        help="p95 SLO, e.g. /embed=2000 or '*=500'",
    )
    parser.add_argument("--slo-file", action="append", default=[], type=Path, help='JSON {"/embed": 2000}')
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second")
    parser.add_argument("--duration", default="30s", help="Locust run time, e.g. 45s, 5m")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "out" / "run")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--client-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="locustfile settings, e.g. SAMCLIP_LT_WEIGHT_CLICK=0",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait for /readyz (vit_b: minutes)"
    )
    parser.add_argument("--fail-on-5xx", action="store_true", help="exit 1 if any 5xx or connection error")
    parser.add_argument("--fail-on-errors", action="store_true", help="exit 1 if any non-200 answer")
    return parser


def scenario_envs(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """(server env, client env) for the scenario; --server-env / --client-env win over the defaults."""
    overload, arrival = args.scenario == "overload", args.scenario == "arrival"
    server_env = {**(OVERLOAD_SERVER_ENV if overload else {}), **parse_env(args.server_env)}
    scenario_client = OVERLOAD_CLIENT_ENV if overload else {}
    if arrival:
        scenario_client = {
            **ARRIVAL_CLIENT_ENV,
            "SAMCLIP_LT_ARRIVAL_RATE": str(args.rate),
            "SAMCLIP_LT_ARRIVAL_OP": args.arrival_op,
        }
    client_env = {
        **scenario_client,
        **parse_env(args.client_env),
        "SAMCLIP_LT_RECORD": str(args.out / "records.json"),
    }
    return server_env, client_env


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    slos = slo.parse_slos(args.slo, args.slo_file)
    defaults = {"normal": (8, 2.0), "overload": (48, 48.0), "arrival": (1, 1.0)}[args.scenario]
    args.users = args.users or defaults[0]
    args.spawn_rate = args.spawn_rate or max(defaults[1], args.users / 4)
    args.out.mkdir(parents=True, exist_ok=True)
    server_env, client_env = scenario_envs(args)
    proc = None
    host = args.host
    if args.bundle is not None:
        port = free_port()
        proc = start_server(args.bundle, port, server_env, args.out / "server.log")
        host = f"http://127.0.0.1:{port}"
    try:
        wait_ready(host, proc, args.ready_timeout)
        started = time.monotonic()
        locust_rc = run_locust(host, args, client_env)
        elapsed = time.monotonic() - started
    finally:
        server_rc = stop_server(proc) if proc is not None else None
    records = json.loads((args.out / "records.json").read_text())
    summary = summarize(records, min(elapsed, parse_duration(args.duration)))
    summary.update(
        scenario=args.scenario,
        users=args.users,
        host=host,
        locust_exit_code=locust_rc,
        server_exit_code=server_rc,
        server_env=server_env,
        client_env={k: v for k, v in client_env.items() if k != "SAMCLIP_LT_RECORD"},
        slo=slo.check_slos(summary, slos),
    )
    if args.scenario == "arrival":
        summary["offered_rps_target"] = args.rate
    return report(summary, args)


def report(summary: dict, args: argparse.Namespace) -> int:
    """Write summary.json / summary.md, print the markdown; the exit code (1: SLO violated or errors)."""
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    title = f"samclip-serve load test: {args.scenario}, {args.users} users, {args.duration}"
    (args.out / "summary.md").write_text(markdown(summary, title) + slo.markdown(summary["slo"]))
    print((args.out / "summary.md").read_text())
    counts = summary["status_counts"]
    failed = (args.fail_on_5xx and summary["errors_5xx"] + counts.get("0", 0) > 0) or (
        args.fail_on_errors and summary["errors_other"] + summary["errors_5xx"] + counts.get("429", 0) > 0
    )
    violated = [check["endpoint"] for check in summary["slo"] if not check["ok"]]
    if violated:
        print(f"SLO violated: {', '.join(violated)}", file=sys.stderr)
    return 1 if failed or violated else 0


def parse_duration(text: str) -> float:
    """Locust-style duration ('90', '45s', '5m', '1h30m') -> seconds."""
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for char in text.strip():
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * units[char]
            number = ""
    return total + (float(number) if number else 0.0)


if __name__ == "__main__":
    sys.exit(main())
