"""`python -m loadtests.cluster`: run the scenarios, print the table, write the JSON report.

Exit code: 0; 1 with --check when a check fails (loadtests/cluster/checks.py); 2 on a usage error; 130 when
interrupted (every child process is stopped and the temporary folder removed either way).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from loadtests.cluster import checks, cost, report
from loadtests.cluster.harness import REPLICA_DEFAULTS, Harness, Options, shared_tier_supported
from loadtests.cluster.procs import Processes
from loadtests.cluster.proxy import DEFAULT_NEXT_UPSTREAM
from loadtests.cluster.scenarios import DEFAULT_SCENARIOS, SCENARIOS, ordered
from loadtests.run import ROOT, parse_env

SHORT = {"duration": 8.0, "users": 8, "cost_rounds": 3}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "training" / "demo_bundle")
    parser.add_argument("--replicas", type=int, default=3, help="server replicas N (default 3)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of load per scenario (20; short 8)"
    )
    parser.add_argument("--users", type=int, default=None, help="click-to-segment users (default 8)")
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)}",
    )
    parser.add_argument("--short", action="store_true", help="CI mode: every default scenario in about 90 s")
    parser.add_argument("--fault-at", type=float, default=0.4, help="fault after this share of the run")
    parser.add_argument(
        "--proxy-next-upstream", default=DEFAULT_NEXT_UPSTREAM, help="nginx proxy_next_upstream"
    )
    parser.add_argument("--cost-rounds", type=int, default=None, help="Redis-hit cost probe rounds (0 = off)")
    parser.add_argument(
        "--client-env", action="append", default=[], metavar="KEY=VALUE", help="locustfile setting"
    )
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="replica setting"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "loadtests" / "out" / "cluster.json")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, configs, events)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a scenario check fails")
    return parser


def options_from(args: argparse.Namespace) -> Options:
    short = SHORT if args.short else {"duration": 20.0, "users": 8, "cost_rounds": 6}
    args.cost_rounds = short["cost_rounds"] if args.cost_rounds is None else args.cost_rounds
    return Options(
        bundle=args.bundle,
        replicas=args.replicas,
        duration_s=args.duration or short["duration"],
        users=args.users or short["users"],
        fault_at=args.fault_at,
        next_upstream=args.proxy_next_upstream,
        client_env=parse_env(args.client_env),
        server_env=parse_env(args.server_env),
    )


def run(args: argparse.Namespace, workdir: Path) -> dict:
    options = options_from(args)
    workdir.mkdir(parents=True, exist_ok=True)
    scenarios = ordered([name.strip() for name in args.scenarios.split(",") if name.strip()])
    procs = Processes(workdir, options.bundle, {**REPLICA_DEFAULTS, **options.server_env})
    harness = Harness(procs, options)
    started, results, measured = time.monotonic(), [], None
    try:
        for scenario in scenarios:
            print(f"[cluster] {scenario.title} ...", file=sys.stderr, flush=True)
            results.append(harness.run(scenario))
            if scenario.name == "rr-redis" and args.cost_rounds > 0 and options.replicas >= 2:
                a, b = procs.replicas[0].url, procs.replicas[1].url
                measured = cost.measure(a, b, rounds=args.cost_rounds)
    finally:
        procs.close()
    tier = shared_tier_supported()
    return {
        "options": {**vars(options), "bundle": str(options.bundle), "scenarios": [s.name for s in scenarios]},
        "shared_tier": tier,
        "wall_s": round(time.monotonic() - started, 1),
        "scenarios": results,
        "cost": measured,
        "checks": checks.check_all(results, options.replicas, tier, options.next_upstream),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the same cleanup as Ctrl-C
    workdir = Path(tempfile.mkdtemp(prefix="samclip-cluster-"))
    try:
        result = run(args, workdir)
    except KeyboardInterrupt:
        print("[cluster] interrupted: children stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"[cluster] work folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report.render(result))
    print(f"\n[cluster] {result['wall_s']} s; JSON report: {args.json}")
    failed = [c for c in result["checks"] if not c["ok"]]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
