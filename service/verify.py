"""`python -m service.verify BUNDLE --backend NAME`: gate a serving backend against fp32 ONNX Runtime on the CPU.

The backend under test is created exactly as the server creates it (service.runtime.base.create_backend over
the sha256-verified bundle, with the given settings), so the check covers what will be served; the reference is
the plain onnxruntime backend on the CPU (fp32 graphs, no variant). Reduced-precision outputs cannot meet the
1e-4 abs tolerances of `python -m model_export verify` (fp32 ONNX vs torch), so backends are held to accuracy
gates (samclip_bundle.parity): GPU_GATES for GPU and torch backends (SAM decoder mask IoU >= 0.97 on random point
/ box / mask prompts, each side decoding its own image embedding; CLIP image and text embedding cosine >= 0.99),
the CPU fast-path GATES (those plus text-segment IoU >= 0.95) for onnxruntime / openvino on the CPU. A backend that cannot load here (no
GPU, no TensorRT, a mismatched engine) yields ok=false with its reason. Prints one JSON report; exit 0 when ok.
`python -m model_export verify BUNDLE --backend NAME` runs this in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from samclip_bundle.parity import (
    GATES,
    GPU_GATES,
    generated_images,
    parity_report,
    random_prompts,
    random_text_ids,
)
from service.bundle import Bundle, BundleError
from service.runtime.base import BackendError
from service.runtime.registry import create_backend

DEFAULT_PRECISION = {"tensorrt": "fp16"}


def verify_settings(backend: str, precision: str | None = None, cuda_device: int = 0, **extra: Any) -> Any:
    """The settings attributes backends read (service.settings.Settings has the same names)."""
    return SimpleNamespace(
        backend=backend,
        precision=precision or DEFAULT_PRECISION.get(backend, "auto"),
        cuda_device=cuda_device,
        intra_op_threads=0,
        inter_op_threads=1,
        **extra,
    )


def gate_backend(
    bundle: Bundle, fast: Any, samples: int = 2, seed: int = 0, prompts: int = 16, texts: int = 8
) -> dict[str, Any]:
    """parity_report of `fast` (a loaded Backend) vs the plain onnxruntime backend on the CPU over `bundle`:
    generated images, random point/box/mask prompts, random CLIP ids. "passed" = the gates for its device."""
    ref = create_backend("onnxruntime", bundle, verify_settings("onnxruntime", variant="none", device="cpu"))
    pre = bundle.manifest.preprocess
    images = generated_images(
        samples, bundle.image_size, list(pre.pixel_mean), list(pre.pixel_std), seed=seed
    )
    report = parity_report(
        ref,
        fast,
        images,
        random_prompts(prompts, bundle.image_size, bundle.embed_grid, seed=seed),
        random_text_ids(texts, bundle.context_length, seed=seed),
    )
    ref.close()
    cpu_fast_path = fast.info.device == "cpu" and fast.info.name in ("onnxruntime", "openvino")
    gates = GATES if cpu_fast_path else GPU_GATES
    report["cpu_fast_path_gates_passed"] = report.pop("passed")
    report["gates"] = gates
    report["passed"] = all(report[k] >= v for k, v in gates.items())
    return report


def verify_backend(
    bundle_dir: str | Path, backend: str, samples: int = 2, seed: int = 0, **settings: Any
) -> dict:
    """Gate `backend` (any create_backend name) on `samples` generated images; JSON-ready report with "ok"."""
    started = time.perf_counter()
    head: dict[str, Any] = {"bundle": str(bundle_dir), "backend": backend}
    try:
        bundle = Bundle.load(bundle_dir)
        fast = create_backend(backend, bundle, verify_settings(backend, **settings))
    except (BackendError, BundleError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        return {**head, "ok": False, "error": error, "seconds": round(time.perf_counter() - started, 2)}
    try:
        report = gate_backend(bundle, fast, samples=samples, seed=seed)
    finally:
        fast.close()
    return {
        **head,
        "ok": bool(report["passed"]),
        "model": bundle.model_name,
        "random_init": bundle.random_init,
        "precision": fast.info.precision,
        "device": fast.info.device,
        "backend_details": fast.info.details,
        **report,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.verify", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--backend", required=True, help="backend name as SAMCLIP_BACKEND (auto, tensorrt, ...)")
    p.add_argument("--samples", type=int, default=2, help="generated images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default=None, help="SAMCLIP_PRECISION for the backend under test")
    p.add_argument("--variant", default=None, help="SAMCLIP_VARIANT for the backend under test")
    p.add_argument("--device", default="auto", help="SAMCLIP_DEVICE for the backend under test")
    p.add_argument("--cuda-device", type=int, default=0)
    args = p.parse_args(argv)
    report = verify_backend(
        args.bundle, args.backend, samples=args.samples, seed=args.seed, precision=args.precision,
        variant=args.variant, device=args.device, cuda_device=args.cuda_device,
    )  # fmt: skip
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
