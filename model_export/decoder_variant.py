"""The `fused` SAM decoder variant of a bundle: `python -m model_export decoder-variant BUNDLE`.

Writes `sam_decoder.fused.onnx`, the graph of model_export.decoder_fast.FusedSamDecoder (the plain decoder's
function, same inputs and outputs, in ~43% fewer multiply-adds and no large transposes), exported from the
weights the manifest records (`model_from_manifest`: the random-init seed or the checkpoint files), and lists
it in manifest.variants["sam_decoder"] for the CPU runtimes. Services choose it with setting
`decoder_variant` (default "auto"), independently of the encoder / CLIP-head `variant`
(service/runtime/decoder.py). `python -m model_export export` runs this step after the graphs are written.

Parity, recorded in the entry: generated images through the bundle's fp32 encoder (ONNX Runtime), random
prompts (points, boxes, mask prompts; samclip_bundle.parity.random_prompts), the fused graph under each runtime
it is listed for (OpenVINO at its bf16 hint, ONNX Runtime in fp32) against the PLAIN graph in fp32 ONNX Runtime:
mean IoU of the low-res masks (all 4 outputs, logits > 0) must reach GATES["decoder_mask_iou"] (0.97) in every
runtime, and the fp32 outputs must agree to within `FP32_TOLERANCE` (the rewrite is exact up to float rounding).
The plain graph's own figure under the same runtime is recorded next to it for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from samclip_bundle.hashing import sha256_file
from samclip_bundle.manifest import Manifest, Parity, Variant
from samclip_bundle.parity import GATES, generated_images, mask_iou, random_prompts

NAME = "fused"
FILE = "sam_decoder.fused.onnx"
RUNTIMES = {"openvino": "bf16", "onnxruntime": "f32"}  # runtime label -> precision it is measured at
FP32_TOLERANCE = 1e-3  # max |fused - plain| of the low-res logits, both fp32 in ONNX Runtime


def export_fused_decoder(model: Any, cfg: Any, path: Path, opset: int = 17) -> Path:
    """Export FusedSamDecoder(model) to `path` with the plain decoder's names and dynamic axes; checked by
    onnx.checker and simplified by onnxslim like the bundle's graphs."""
    from model_export.decoder_fast import FusedSamDecoder
    from model_export.export_onnx import (
        check_graph,
        export_graph,
        graph_specs,
        simplify_graph,
        stamp_output_shapes,
    )

    (spec,) = [s for s in graph_specs(model, cfg) if s.name == "sam_decoder"]
    spec.module = FusedSamDecoder(model)
    export_graph(spec, path, opset)
    stamp_output_shapes(path, spec.output_shapes)
    check_graph(path)
    simplify_graph(path)
    return path


def _runner(path: Path, runtime: str) -> Any:
    from model_export.onnx_graphs import OnnxGraphs

    return OnnxGraphs({"sam_decoder": path}, runtime=runtime, precision=RUNTIMES.get(runtime, "f32"))


def _mean_iou(ref: np.ndarray, out: np.ndarray) -> float:
    """ref, out: (K, M, g, g) logits -> mean IoU over the K*M masks (logits > 0)."""
    pairs = zip(ref.reshape(-1, *ref.shape[2:]) > 0, out.reshape(-1, *out.shape[2:]) > 0, strict=True)
    return float(np.mean([mask_iou(a, b) for a, b in pairs]))


def decoder_parity(bundle: Path, manifest: Manifest, fused: Path, samples: int = 2, seed: int = 0) -> dict:
    """The figures of the module docstring, with "passed"."""
    from model_export.onnx_graphs import OnnxGraphs

    pre = manifest.preprocess
    images = generated_images(samples, pre.image_size, pre.pixel_mean, pre.pixel_std, seed=seed + 2000)
    prompts = random_prompts(12, pre.image_size, manifest.embed_grid, seed=seed + 2000)
    plain_path = bundle / manifest.graphs["sam_decoder"].file
    ref = OnnxGraphs({"encoder": bundle / manifest.graphs["encoder"].file, "sam_decoder": plain_path})
    embeddings = [ref.encode(images[i : i + 1]).image_embeddings for i in range(samples)]
    expected = [ref.decode(e, **prompts).low_res_masks for e in embeddings]
    report: dict[str, Any] = {"samples": {"images": samples, "prompts": len(prompts["point_labels"])}}
    for runtime in RUNTIMES:
        for label, path in (("fused", fused), ("plain", plain_path)):
            runner = _runner(path, runtime)
            outs = [runner.decode(e, **prompts).low_res_masks for e in embeddings]
            report[f"{label}_{runtime}_mask_iou"] = round(
                float(np.mean([_mean_iou(r, o) for r, o in zip(expected, outs, strict=True)])), 6
            )
            if label == "fused" and runtime == "onnxruntime":
                err = max(float(np.abs(r - o).max()) for r, o in zip(expected, outs, strict=True))
                report["fp32_max_abs_error"] = err
    gate = GATES["decoder_mask_iou"]
    report["decoder_mask_iou"] = min(report[f"fused_{r}_mask_iou"] for r in RUNTIMES)
    report["passed"] = report["decoder_mask_iou"] >= gate and report["fp32_max_abs_error"] <= FP32_TOLERANCE
    return report


def add_decoder_variant(
    bundle: Path, model: Any = None, cfg: Any = None, samples: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Export the fused decoder into `bundle`, measure its parity and list it in the manifest when it passed
    (its file is removed otherwise). model / cfg: the bundle's weights (default: rebuilt from the manifest).
    Returns a summary with the parity figures."""
    bundle = Path(bundle)
    manifest = Manifest.read(bundle)
    if model is None:
        from model_export.sources import model_from_manifest

        model, cfg = model_from_manifest(manifest)
    start = time.perf_counter()
    path = export_fused_decoder(model, cfg, bundle / FILE, opset=manifest.opset or 17)
    parity = decoder_parity(bundle, manifest, path, samples, seed)
    if parity["passed"]:
        entry = Variant(
            name=NAME, file=FILE, sha256=sha256_file(path), target="decoder-fused", runtimes=list(RUNTIMES),
            precision="fp32", rank=0, parity=Parity(**parity),
        )  # fmt: skip
        manifest.upsert_variant("sam_decoder", entry)
        manifest.refresh_fingerprint()
        manifest.write(bundle)
    else:
        path.unlink(missing_ok=True)
    return {"variant": NAME, "file": FILE if parity["passed"] else None, "parity": parity,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


# ----------------------------------------------------------------------------------------- CLI
def add_decoder_variant_parser(subparsers: Any) -> None:
    """Register `decoder-variant` on the model_export argparse subparsers."""
    p = subparsers.add_parser(
        "decoder-variant", help="write the `fused` SAM decoder variant (same function, fewer operations)"
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--samples", type=int, default=2, help="generated images for the parity figures")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_decoder_variant)


def cmd_decoder_variant(args: argparse.Namespace) -> int:
    summary = add_decoder_variant(args.bundle, samples=args.samples, seed=args.seed)
    print(json.dumps(summary, indent=2))
    return 0 if summary["file"] else 1
