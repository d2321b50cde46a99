"""Parity check of a bundle against the PyTorch model rebuilt from the same weights.

`verify_bundle(bundle_dir, samples=N, backend="onnxruntime")` re-hashes the artifacts, rebuilds the SamClip
model from the manifest's weights record (random-init seed, or the recorded checkpoint files), runs every graph
through a *runner* of the chosen backend and the PyTorch modules on the same random inputs, and reports the
max abs error per output plus binary-mask agreement at original size on non-square images (SamPredictor
pre/post-processing, see model_export.torch_parity). Runners plug in through `RUNNERS` / `register_runner`:
a factory (bundle_dir, manifest) -> BundleRunner whose `run(graph, feeds)` executes one graph.

Serving backends (`--backend` one of the service's backend names other than the plain onnxruntime runner, e.g.
tensorrt, openvino, torch) are checked by the service itself: `python -m service.verify BUNDLE --backend X`, run
in a subprocess (model_export never imports service), gates them against fp32 ONNX Runtime on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samclip_bundle.manifest import Manifest

# output -> (atol, rtol): passes when max_abs_err <= atol + rtol * max_abs_ref.
TOLERANCES: dict[str, tuple[float, float]] = {
    "encoder.image_embeddings": (1e-4, 0.0),
    "encoder.patch_tokens": (1e-4, 1e-5),
    "clip_head.image_embedding": (1e-4, 0.0),
    "clip_head.patch_embeddings": (1e-4, 0.0),
    "text_encoder.text_embedding": (1e-4, 0.0),
    "sam_decoder.iou_predictions": (1e-4, 1e-4),
    "sam_decoder.low_res_masks": (1e-3, 1e-4),
}
MIN_PIXEL_AGREEMENT = 0.999


class BundleRunner:
    """Runs the bundle's four graphs on one backend. Arrays are numpy float32 (input_ids int64).

    Subclasses implement `run(graph, feeds) -> {output name: array}` with the names and shapes of
    BUNDLE.md; the four convenience methods below are the graph-level API the verifier uses.
    """

    name = "base"

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """image (B,3,S,S) -> image_embeddings (B,C,h,w), patch_tokens (B,h,w,W)."""
        return self.run("encoder", {"image": image})

    def clip_head(self, patch_tokens: np.ndarray) -> dict[str, np.ndarray]:
        """patch_tokens (B,h,w,W) -> image_embedding (B,D), patch_embeddings (B,h,w,D)."""
        return self.run("clip_head", {"patch_tokens": patch_tokens})

    def encode_text(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        """input_ids (N,77) int64 -> text_embedding (N,D)."""
        return self.run("text_encoder", {"input_ids": input_ids})

    def decode(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """image_embeddings, point_coords, point_labels, mask_input, has_mask_input -> iou_predictions,
        low_res_masks (see BUNDLE.md)."""
        return self.run("sam_decoder", feeds)


class OrtRunner(BundleRunner):
    """ONNX Runtime (CPU execution provider by default); one InferenceSession per graph, created lazily."""

    name = "onnxruntime"

    def __init__(self, bundle_dir: Path, manifest: Manifest, providers: tuple[str, ...] | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.providers = list(providers or ("CPUExecutionProvider",))
        self._sessions: dict[str, Any] = {}

    def _session(self, graph: str) -> Any:
        if graph not in self._sessions:
            import onnxruntime as ort

            path = self.bundle_dir / self.manifest.graphs[graph].file
            self._sessions[graph] = ort.InferenceSession(str(path), providers=self.providers)
        return self._sessions[graph]

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(graph)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))


RunnerFactory = Callable[[Path, Manifest], BundleRunner]
RUNNERS: dict[str, RunnerFactory] = {"onnxruntime": OrtRunner}


def register_runner(name: str, factory: RunnerFactory) -> None:
    """Add a backend to `verify --backend`: factory(bundle_dir, manifest) -> BundleRunner."""
    RUNNERS[name] = factory


# Serving backends gated against fp32 ONNX Runtime by `python -m service.verify` (mask IoU / cosine gates).
GATED_BACKENDS = ("openvino", "tensorrt", "torch", "ort-cuda", "torch-cuda", "onnxruntime-int8")


class VerificationError(RuntimeError):
    """The bundle could not be verified at all (unknown backend, unreadable manifest)."""


@dataclass
class Comparison:
    """Running max of |runner - torch| per output and the binary-mask agreement figures."""

    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    mask_agreement: list[float] = field(default_factory=list)
    mask_iou: list[float] = field(default_factory=list)

    def add(self, key: str, actual: np.ndarray, expected: np.ndarray) -> None:
        if actual.shape != expected.shape:
            raise AssertionError(f"{key}: shape {actual.shape} != reference {expected.shape}")
        err = float(np.max(np.abs(actual.astype(np.float64) - expected))) if actual.size else 0.0
        ref = float(np.max(np.abs(expected))) if expected.size else 0.0
        entry = self.outputs.setdefault(key, {"max_abs_err": 0.0, "max_abs_ref": 0.0})
        entry["max_abs_err"] = max(entry["max_abs_err"], err)
        entry["max_abs_ref"] = max(entry["max_abs_ref"], ref)

    def add_masks(self, actual: np.ndarray, expected: np.ndarray) -> None:
        """actual/expected: (..., H, W) bool masks at original size."""
        flat_a = actual.reshape(-1, *actual.shape[-2:])
        flat_e = expected.reshape(-1, *expected.shape[-2:])
        for a, e in zip(flat_a, flat_e, strict=True):
            self.mask_agreement.append(float(np.mean(a == e)))
            union = np.logical_or(a, e).sum()
            self.mask_iou.append(float(np.logical_and(a, e).sum() / union) if union else 1.0)

    def report(self) -> dict[str, Any]:
        outputs = {}
        for key, entry in sorted(self.outputs.items()):
            atol, rtol = TOLERANCES.get(key, (1e-4, 0.0))
            tol = atol + rtol * entry["max_abs_ref"]
            outputs[key] = {**entry, "tolerance": tol, "ok": entry["max_abs_err"] <= tol}
        masks = {
            "count": len(self.mask_agreement),
            "min_pixel_agreement": min(self.mask_agreement, default=1.0),
            "min_iou": min(self.mask_iou, default=1.0),
            "mean_iou": float(np.mean(self.mask_iou)) if self.mask_iou else 1.0,
            "threshold_pixel_agreement": MIN_PIXEL_AGREEMENT,
        }
        masks["ok"] = masks["min_pixel_agreement"] >= MIN_PIXEL_AGREEMENT
        return {"outputs": outputs, "masks": masks}


def verify_bundle(
    bundle_dir: str | Path, samples: int = 2, backend: str = "onnxruntime", seed: int = 0
) -> dict[str, Any]:
    """Verify every graph of a bundle; returns a JSON-ready report with "ok" (bool) at the top level."""
    from model_export.sources import model_from_manifest
    from model_export.torch_parity import run_parity

    if backend in GATED_BACKENDS:
        return verify_serving_backend(bundle_dir, backend, samples=samples, seed=seed)
    if backend not in RUNNERS:
        raise VerificationError(f"unknown backend {backend!r}; implemented: {sorted(RUNNERS)}")
    bundle = Path(bundle_dir)
    started = time.perf_counter()
    manifest = Manifest.read(bundle)
    problems = manifest.check_artifacts(bundle)
    model, cfg = model_from_manifest(manifest)
    runner = RUNNERS[backend](bundle, manifest)
    comparison = Comparison()
    image_sizes = run_parity(model, cfg, runner, comparison, samples=samples, seed=seed)
    parity = comparison.report()
    ok = not problems and parity["masks"]["ok"] and all(o["ok"] for o in parity["outputs"].values())
    return {
        "ok": ok,
        "bundle": str(bundle),
        "backend": backend,
        "model": manifest.model.name,
        "fingerprint": manifest.fingerprint,
        "weights": manifest.weights.model_dump(mode="json", exclude_none=True),
        "integrity": {"ok": not problems, "problems": problems},
        "samples": samples,
        "image_sizes": image_sizes,
        **parity,
        "seconds": round(time.perf_counter() - started, 2),
    }


def verify_serving_backend(
    bundle_dir: str | Path, backend: str, samples: int = 2, seed: int = 0
) -> dict[str, Any]:
    """`python -m service.verify BUNDLE --backend NAME --samples N --seed S` in a subprocess; its JSON report."""
    cmd = [sys.executable, "-m", "service.verify", str(bundle_dir), "--backend", backend]
    cmd += ["--samples", str(samples), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise VerificationError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}): {tail}") from None
