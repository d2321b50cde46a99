"""`python -m model_export {export,verify,save,list-models,...}` (argparse subcommands).

Adding a subcommand = one `add_<name>_parser(subparsers)` function that adds its parser and sets
`func=<handler(args) -> exit status>` via `set_defaults`, plus one "module:function" line in SUBCOMMANDS.
Modules are imported only when the CLI starts; one that fails to import still shows up and explains why.
Expected user errors (bad checkpoint, missing weights, unknown model, bad bundle) print one line to stderr
and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from samclip_bundle.manifest import Manifest

SUBCOMMANDS: list[str] = [
    "model_export.cli:add_export_parser",
    "model_export.cli:add_verify_parser",
    "model_export.cli:add_save_parser",
    "model_export.cli:add_list_models_parser",
    "model_export.quantize:add_optimize_parser",
    "model_export.trt_build:add_build_trt_parser",
    "model_export.upgrade:add_upgrade_parser",
    "model_export.decoder_variant:add_decoder_variant_parser",
]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input", reported as `error: ...` with exit status 2."""
    from model_export.config import ConfigError
    from samclip_bundle.manifest import ManifestError

    errors: list[type[BaseException]] = [ConfigError, ManifestError, FileNotFoundError]
    try:  # torch-side errors (only importable where torch is installed)
        from model_export.checkpoint import CheckpointError
        from model_export.sources import WeightsError
        from model_export.verify import VerificationError

        errors += [CheckpointError, WeightsError, VerificationError]
    except ImportError:
        pass
    return tuple(errors)


def _add_weight_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="architecture name (see `list-models`) or a config JSON path")
    p.add_argument("--sam-checkpoint", type=Path, help="official SAM checkpoint (.pth / .safetensors)")
    p.add_argument("--clip-checkpoint", type=Path, help="open_clip ViT-L-14 state dict (text tower)")
    p.add_argument("--samclip-checkpoint", type=Path, help="SAM-CLIP safetensors written by `save`")
    p.add_argument("--random-init", action="store_true", help="allow RANDOM weights (development only)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random weights (with --random-init)")


def _assemble(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    from model_export.sources import WeightsError, assemble_model

    if args.seed is not None and not args.random_init:
        raise WeightsError("--seed only applies together with --random-init")
    return assemble_model(
        args.model, args.sam_checkpoint, args.clip_checkpoint, args.samclip_checkpoint,
        random_init=args.random_init, seed=args.seed,
    )  # fmt: skip


def _warn_random(provenance: dict[str, Any]) -> None:
    if provenance.get("random_init"):
        from samclip_bundle.manifest import RANDOM_WEIGHTS_WARNING

        parts = provenance.get("random_parts")
        which = f" ({', '.join(parts)})" if parts else ""
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}{which}; seed {provenance.get('seed')}", file=sys.stderr)


def add_export_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export the ONNX bundle (4 graphs + tokenizer + manifest)")
    _add_weight_args(p)
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument(
        "--no-optimize", action="store_true", help="skip the CPU variant step (`optimize`) that export runs"
    )
    p.add_argument(
        "--optimize-target", choices=("openvino-int8", "ort-int8"), default=None,
        help="CPU variant written after export (default: openvino-int8 where OpenVINO is installed, the CPU "
        "runtime `backend=auto` serves with; else ort-int8)",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)


def default_optimize_target() -> str:
    """The CPU variant the default serve path runs: OpenVINO's int8 when OpenVINO is installed, else ORT's."""
    return "openvino-int8" if importlib.util.find_spec("openvino") is not None else "ort-int8"


def cmd_export(args: argparse.Namespace) -> int:
    from model_export.export_onnx import export_bundle

    start = time.perf_counter()
    model, cfg, provenance = _assemble(args)  # export_bundle itself warns about random weights
    manifest = export_bundle(
        model, cfg, args.out, provenance, opset=args.opset, simplify=not args.no_simplify,
        progress=not args.no_progress,
    )  # fmt: skip
    optimized = None
    if not args.no_optimize:  # parity is measured and recorded; a failed variant is recorded with why
        from model_export.quantize import optimize

        result = optimize(args.out, args.optimize_target or default_optimize_target())
        optimized = {k: result[k] for k in ("target", "variant", "kept", "reason")}
        optimized["parity_passed"] = bool(result["kept"])
        from model_export.decoder_variant import add_decoder_variant

        decoder = add_decoder_variant(args.out, model, cfg)
        optimized["decoder_variant"] = {"file": decoder["file"], "parity_passed": decoder["parity"]["passed"]}
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    summary = {
        "bundle": str(args.out), "model": cfg.name, "fingerprint": Manifest.read(args.out).fingerprint,
        "size_bytes": size, "seconds": round(time.perf_counter() - start, 1),
        "random_init": manifest.weights.random_init, "optimize": optimized,
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


def add_verify_parser(subparsers: Any) -> None:
    from model_export.verify import GATED_BACKENDS, RUNNERS

    p = subparsers.add_parser("verify", help="compare every bundle graph against the PyTorch model")
    p.add_argument("bundle", type=Path)
    p.add_argument("--samples", type=int, default=2, help="random non-square images")
    p.add_argument("--backend", choices=sorted({*RUNNERS, *GATED_BACKENDS}), default="onnxruntime")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from model_export.verify import verify_bundle

    if args.samples < 1:
        print("error: --samples must be >= 1", file=sys.stderr)
        return 2
    report = verify_bundle(args.bundle, samples=args.samples, backend=args.backend, seed=args.seed)
    print(json.dumps(report, indent=2))
    if not report["ok"]:
        print("verify: FAILED (beyond tolerance or integrity problems, see report)", file=sys.stderr)
    return 0 if report["ok"] else 1


def add_save_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("save", help="write a SAM-CLIP safetensors checkpoint")
    _add_weight_args(p)
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_save)


def cmd_save(args: argparse.Namespace) -> int:
    from model_export.checkpoint import save_samclip
    from samclip_bundle.hashing import sha256_file

    model, cfg, provenance = _assemble(args)
    _warn_random(provenance)
    path = save_samclip(model, args.out, extra_metadata=provenance)
    print(json.dumps({"checkpoint": str(path), "model": cfg.name, "sha256": sha256_file(path)}, indent=2))
    return 0


def add_list_models_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("list-models", help="architectures available to --model")
    p.set_defaults(func=cmd_list_models)


def cmd_list_models(args: argparse.Namespace) -> int:
    from model_export.config import list_models, load_config

    for name in list_models():
        print(f"{name}\t{load_config(name).description}")
    return 0


def _register(subparsers: Any, target: str) -> None:
    module_name, _, attr = target.partition(":")
    try:
        add_parser = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        name = attr.removeprefix("add_").removesuffix("_parser").replace("_", "-")
        p = subparsers.add_parser(name, help=f"(unavailable: {exc})")
        p.set_defaults(func=lambda _args, exc=exc: _unavailable(name, exc))
        return
    add_parser(subparsers)


def _unavailable(name: str, exc: BaseException) -> int:
    print(f"error: `{name}` is unavailable here: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_export", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages (step timings)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for target in SUBCOMMANDS:
        _register(subparsers, target)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
