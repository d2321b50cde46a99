"""`python -m service --bundle BUNDLE --host 127.0.0.1 --port 8000` (also the `samclip-serve` script).

Command-line flags override `SAMCLIP_*` environment variables. Without `--bundle` (and no SAMCLIP_BUNDLE) the
bundle at `default_bundle_dir` is served; when it holds no manifest.json, a RANDOM-INIT `tiny` bundle is
exported there first (needs torch: `pip install -e '.[export]'`), and /info and the logs say so loudly.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from samclip_bundle.manifest import Manifest
from service.logging import configure_logging
from service.memory import tune_malloc
from service.settings import Settings

log = logging.getLogger("service.cli")

EXPORT_HINT = (
    "no model bundle at {path} and torch is not installed to export a random-init one.\n"
    "Either pass --bundle BUNDLE (a directory written by `python -m model_export export`), or install the export "
    "extra (`pip install -e '.[export]'`) so a random-init tiny bundle can be created there."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samclip-serve", description="Serve a SAM-CLIP model bundle over HTTP."
    )
    parser.add_argument(
        "--bundle", type=Path, help="bundle directory (default: SAMCLIP_BUNDLE or default_bundle_dir)"
    )
    parser.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, help="bind port (default 8000)")
    parser.add_argument("--backend", help="inference backend (default onnxruntime)")
    parser.add_argument("--workers", type=int, help="worker processes (default 1; graceful drain needs 1)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    return parser


def export_random_bundle(target: Path) -> None:
    """Export a random-init `tiny` bundle into `target` (atomically: temp dir, then rename)."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("model_export") is None:
        raise SystemExit(EXPORT_HINT.format(path=target))
    log.warning(
        "no bundle at %s: exporting a RANDOM-INIT tiny bundle there (outputs are meaningless)", target
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    cmd = [sys.executable, "-m", "model_export", "export", "--model", "tiny", "--random-init", "--seed", "0"]
    try:
        subprocess.run([*cmd, "--out", str(tmp)], check=True)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"exporting the random-init bundle failed (exit {exc.returncode})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_bundle(settings: Settings) -> Path:
    """The bundle to serve. Only the default location is ever auto-exported; an explicit --bundle that is
    missing or broken is served as 'live, not ready' with the reason in /readyz (no crash loop)."""
    if settings.bundle is not None:
        return settings.bundle
    target = settings.default_bundle_dir
    if not Manifest.exists(target):
        export_random_bundle(target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    if settings.malloc_tuning:  # before any worker thread exists (service/memory.py)
        tune_malloc()
    bundle = ensure_bundle(settings)
    settings = settings.model_copy(update={"bundle": bundle})
    log.info("serving bundle %s on http://%s:%d", bundle, settings.host, settings.port)
    if settings.workers > 1:
        return _serve_workers(settings, overrides)
    from service.main import create_app
    from service.server import serve

    serve(create_app(settings), settings)
    return 0


def _serve_workers(settings: Settings, overrides: dict) -> int:
    """Several uvicorn workers (each loads the model and has its own cache; no coordinated drain). Workers
    build their app from the environment, so the command-line overrides are passed on as SAMCLIP_* vars."""
    import uvicorn

    for key, value in overrides.items():
        os.environ[f"SAMCLIP_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    os.environ["SAMCLIP_BUNDLE"] = str(settings.bundle)
    log.warning(
        "--workers %d: each worker loads the model; graceful drain is per process only", settings.workers
    )
    uvicorn.run(
        "service.main:app_factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
