"""One-shot GPU check (issue 6): bundle -> parity gates -> benchmarks -> JSON + Markdown report.

Run by scripts/gpu_check.sh on an offline GPU machine (or `python scripts/gpu_check.py --help`). Steps, each
recorded as ok / failed (with the error) / skipped (with the reason), under a wall-clock budget:

1. environment: GPU name and compute capability (torch), versions of torch, onnxruntime, TensorRT, cuda-python;
2. bundle: `--bundle` or a random-init export of `--model` (vit_b default) made there with torch;
3. TensorRT engines (fp16) when TensorRT is importable;
4. per GPU backend available there (tensorrt, ort-cuda, torch-cuda): load time, parity gates against fp32
   ONNX Runtime on the CPU (mask IoU >= 0.97, CLIP cosine >= 0.99; service.verify), encoder images/s at
   batch 1/8/32 and decoder ms per prompt for 1/16/64 prompts through the Backend interface (numpy in/out,
   host<->device copies included), then end-to-end through the in-process app: `/segment/prompt` on a
   cached image and `/segment/refine?text=` on a new image (each new image = one encoder pass).
Reports go to `--out` (default $OUT or benchmarks/out) and to benchmarks/gpu-<date>-<gpu>.{json,md}.
`--allow-cpu` adds the torch backend on the CPU so the script itself can be exercised without a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import bench_backend, bench_cpu_reference, end_to_end  # noqa: E402
from gpu_report import ratios, write_reports  # noqa: E402
from gpu_steps import Budget, step  # noqa: E402


# ------------------------------------------------------------------------------------------ environment
def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "present"))
    except Exception as exc:  # noqa: BLE001
        return f"missing ({type(exc).__name__}: {str(exc)[:80]})"


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "onnxruntime": _version("onnxruntime"),
        "tensorrt": _version("tensorrt"),
        "cupy": _version("cupy"),
        "fastapi": _version("fastapi"),
        "pydantic": _version("pydantic"),
    }
    try:
        from cuda import bindings

        env["cuda_bindings"] = getattr(bindings, "__version__", "present")
    except ImportError as exc:
        env["cuda_bindings"] = f"missing ({exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = []
    return env


def gpu_backends(env: dict[str, Any], allow_cpu: bool) -> dict[str, dict[str, Any]]:
    """backend name -> {"available": bool, "reason", "settings"} for every GPU backend."""
    cuda = bool(env["cuda_available"])
    out = {
        "tensorrt": {
            "available": cuda
            and not str(env["tensorrt"]).startswith("missing")
            and not str(env["cuda_bindings"]).startswith("missing"),
            "reason": "needs CUDA, TensorRT 10 and cuda-python",
            "settings": {"precision": "fp16"},
        },
        "ort-cuda": {
            "available": cuda and "CUDAExecutionProvider" in env["onnxruntime_providers"],
            "reason": "onnxruntime here has no CUDAExecutionProvider (onnxruntime-gpu not installed)",
            "settings": {"precision": "auto"},
        },
        "torch-cuda": {
            "available": cuda,
            "reason": "torch sees no CUDA device",
            "settings": {"precision": "auto"},
        },
    }
    if allow_cpu and not cuda:
        out["torch-cuda"] = {
            "available": True,
            "reason": "CPU dry run (--allow-cpu)",
            "settings": {"precision": "bf16", "torch_device": "cpu"},
        }
    return out


# ------------------------------------------------------------------------------------------ bundle
def make_bundle(args: argparse.Namespace, work: Path, budget: Budget) -> dict[str, Any]:
    if args.bundle:
        return {"path": str(args.bundle), "exported": False}
    budget.need(60)
    from model_export.build import build_model
    from model_export.config import load_config
    from model_export.export_onnx import export_bundle

    errors = {}
    for model in dict.fromkeys([args.model, "tiny"]):  # tiny: fallback so the backends still get checked
        out = work / f"bundle_{model}"
        try:
            cfg = load_config(model)
            export_bundle(
                build_model(cfg, seed=0),
                cfg,
                out,
                {"random_init": True, "seed": 0, "sources": []},
                simplify=False,
                progress=False,
            )
        except Exception as exc:  # noqa: BLE001 - recorded, then the fallback model is tried
            errors[model] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        return {
            "path": str(out),
            "exported": True,
            "model": model,
            "random_init_seed": 0,
            "simplified": False,
            "size_mib": round(size / 2**20, 1),
            "export_errors": errors,
        }
    raise RuntimeError(f"export failed: {errors}")


def build_trt(bundle: Path, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    budget.need(120)
    from model_export.trt_build import ProfileLimits, build_bundle_engines

    limits = ProfileLimits(max_batch=max(args.encoder_batches), max_prompts=max(args.decoder_prompts))
    records = build_bundle_engines(bundle, "fp16", limits, workspace_gb=8.0)
    return {
        r["graph"]: {"file": r["file"], "build_s": r["build_s"], "fp32_layers": r["fp32_layers"]}
        for r in records
    }


# ------------------------------------------------------------------------------------------ per backend
def check_backend(
    name: str,
    spec: dict[str, Any],
    bundle_path: Path,
    args: argparse.Namespace,
    budget: Budget,
    report: dict[str, Any],
) -> None:
    from service.bundle import Bundle
    from service.runtime.registry import create_backend
    from service.verify import gate_backend, verify_settings

    if not spec["available"]:
        report["steps"][f"{name}"] = {"status": "skipped", "reason": spec["reason"]}
        print(f"{name}: skipped ({spec['reason']})", flush=True)
        return
    extra = spec["settings"]
    bundle = Bundle.load(bundle_path)

    def load() -> Any:
        budget.need(30)
        settings = verify_settings(name, extra.get("precision"), torch_device=extra.get("torch_device"))
        return create_backend(name, bundle, settings)

    backend = step(report, f"{name}.load", load)
    if backend is None:
        return
    report["steps"][f"{name}.load"]["result"] = {
        "info": {
            "device": backend.info.device,
            "precision": backend.info.precision,
            "details": backend.info.details,
        }
    }
    step(report, f"{name}.gates", run_gates, gate_backend, bundle, backend, args, budget)
    step(report, f"{name}.bench", bench_backend, backend, bundle, args, budget)
    release(backend)
    del backend
    step(report, f"{name}.e2e", end_to_end, name, extra, bundle_path, args, budget)


def run_gates(gate_backend: Any, bundle: Any, backend: Any, args: argparse.Namespace, budget: Budget) -> dict:
    budget.need(30)
    return gate_backend(bundle, backend, samples=args.samples)


def release(backend: Any) -> None:
    """Free a backend's GPU memory before the app loads its own copy."""
    close = getattr(backend, "close", None)
    if callable(close):
        close()
    modules = getattr(backend, "modules", None)
    if isinstance(modules, dict):
        modules.clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "out"))
    p.add_argument("--bundle", type=Path, default=None, help="existing bundle (default: export --model)")
    p.add_argument("--model", default="vit_b", help="architecture exported with random weights")
    p.add_argument("--work", type=Path, default=Path("/tmp/samclip_gpu_check"))
    p.add_argument("--budget-s", type=float, default=420, help="wall-clock budget for all steps")
    p.add_argument("--encoder-batches", type=ints, default=[1, 8, 32])
    p.add_argument("--decoder-prompts", type=ints, default=[1, 16, 64])
    p.add_argument("--samples", type=int, default=2, help="images for the parity gates")
    p.add_argument("--e2e-requests", type=int, default=20)
    p.add_argument("--e2e-new-images", type=int, default=5)
    p.add_argument("--backends", default="tensorrt,ort-cuda,torch-cuda")
    p.add_argument("--allow-cpu", action="store_true", help="dry run of the torch backend on the CPU")
    return p.parse_args(argv)


def finish(report: dict[str, Any], started: float, out: Path, final: bool) -> bool:
    """Fill seconds / ratios / summary and (re)write the reports; True when every gate run passed and no
    step failed. Called after every stage, so a run cut short still leaves its figures behind."""
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["complete"] = final and "interrupted" not in report["steps"]
    report["ratios"] = ratios(report)
    steps = report["steps"]
    gates = [e["result"]["passed"] for n, e in steps.items() if n.endswith(".gates") and e["status"] == "ok"]
    failed = [n for n, e in steps.items() if e["status"] == "failed"]
    report["summary"] = {"gates_run": len(gates), "gates_passed": sum(gates), "failed_steps": failed}
    paths = write_reports(report, out)
    if final:
        print("wrote", *paths, sep="\n  ")
        print(json.dumps(report["summary"]))
    return not failed and all(gates)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, budget = time.perf_counter(), Budget(args.budget_s)
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "args": vars(args),
        "steps": {},
    }
    report["environment"] = step(report, "environment", environment) or {
        "torch": "?", "torch_cuda": None, "onnxruntime": "?", "onnxruntime_providers": [], "tensorrt": "?",
    }  # fmt: skip
    env = report["environment"]
    specs = gpu_backends(env, args.allow_cpu) if "cuda_available" in env else {}
    previous = signal.signal(signal.SIGTERM, _terminate)  # `timeout` -> still write what was measured
    try:
        args.work.mkdir(parents=True, exist_ok=True)
        report["bundle"] = step(report, "bundle", make_bundle, args, args.work, budget)
        finish(report, started, args.out, final=False)
        if report["bundle"]:
            run_backends(Path(report["bundle"]["path"]), specs, args, budget, report, started)
    except SystemExit as exc:
        report["steps"]["interrupted"] = {"status": "failed", "error": str(exc)}
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if finish(report, started, args.out, final=True) else 1


def run_backends(
    path: Path,
    specs: dict[str, Any],
    args: argparse.Namespace,
    budget: Budget,
    report: dict[str, Any],
    started: float,
) -> None:
    wanted = [b for b in args.backends.split(",") if b in specs]
    if any(specs[b]["available"] for b in wanted):
        from service.bundle import Bundle

        step(report, "cpu_reference.bench", bench_cpu_reference, Bundle.load(path), budget)
    if "tensorrt" in wanted and specs["tensorrt"]["available"]:
        if step(report, "tensorrt.build", build_trt, path, args, budget) is None:
            specs["tensorrt"] = {**specs["tensorrt"], "available": False, "reason": "engine build failed"}
    for name in wanted:
        check_backend(name, specs[name], path, args, budget, report)
        finish(report, started, args.out, final=False)


if __name__ == "__main__":
    sys.exit(main())
