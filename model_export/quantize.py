"""Reduced-precision variants of a bundle's graphs: `python -m model_export optimize BUNDLE --target T`.

Targets (the plain fp32 graphs are never touched; variants are extra files listed in manifest.variants):

- `openvino-int8`: ONNX Runtime static quantisation in QDQ format of every MatMul/Gemm whose second input is a
  weight (the linear layers, ~70% of a ViT's FLOPs): int8 symmetric activations (MinMax ranges), int8
  per-channel weights; with `--int8-attention` (variant `int8-qdq-attn`) also the activation x activation
  matmuls (QK^T, AV). Softmax, norms and everything else stay float. OpenVINO reads the QuantizeLinear /
  DequantizeLinear pairs as FakeQuantize and runs those layers in int8 (AMX-int8 / VNNI), the rest under its
  bf16 hint. Files `<graph>.int8.qdq.onnx` / `<graph>.int8attn.qdq.onnx`.
  The MatMul OUTPUTS stay float (no QDQ after the layer: its bias, GELU and residual add read the int32
  accumulator rescaled, not an int8 copy) when the layers read 3-D token tensors, as the encoder exported from
  model_export.modeling does: OpenVINO then fuses bias and dequantisation into the int8 layer (vit_b 1024 px
  encoder: -4% time, closer to fp32). Graphs whose layers read 4-D tensors (older exports of the (B, h, w, C)
  encoder, the CLIP head) keep the int8 outputs: there OpenVINO would add float layout reorders (+10%).
  Calibration (model_export/calibration.py, cached in BUNDLE/.calibration/, shared by both variants): generated
  images through the fp32 encoder, whose outputs (patch tokens; image embeddings + random prompts) calibrate
  the CLIP head and SAM decoder; random CLIP token ids for the text encoder.
- `ort-int8`: ONNX Runtime dynamic quantisation (int8 weights, activations quantised per call) for the
  `onnxruntime` backend on the CPU (runtime label "onnxruntime"). Files `<graph>.int8.onnx`.
- `openvino-bf16`: no new file; measures the plain graphs under OpenVINO's bf16 hint and records it.

Default graphs: encoder and clip_head, the two big ones (the SAM decoder is small, and the text encoder's
outputs are cached per prompt and it is the graph text-segment parity is most sensitive to: both run at the
backend's float precision, bf16 in OpenVINO; `--graphs` quantises them too). `--exclude REGEX` keeps matching
node names float (for a layer that breaks parity).

Every variant entry records: name, file, sha256, target, runtimes, precision, quantized_nodes and `parity`:
the figures of samclip_bundle.parity.parity_report for the whole target path (all of its graphs swapped in at
once, under its runtime) against the fp32 graphs in ONNX Runtime, with `passed` = all gates held. Backends
choose a variant automatically only when it passed. Each run is also recorded in manifest.optimizations
(kept graphs, or why none passed). There is no fp16 target: fp16 on a GPU is TensorRT's or torch's job.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from model_export.calibration import calibration_caches
from model_export.onnx_graphs import OnnxGraphs
from samclip_bundle.graphs import GRAPHS
from samclip_bundle.hashing import sha256_file
from samclip_bundle.manifest import Manifest, OptimizeRecord, Parity, Variant, utc_now
from samclip_bundle.parity import (
    GATES,
    CachedRunner,
    generated_images,
    parity_report,
    random_prompts,
    random_text_ids,
)

TARGETS = {
    "openvino-int8": {
        "name": "int8-qdq",
        "suffix": ".int8.qdq.onnx",
        "runtime": "openvino",
        "precision": "int8",
        "rank": 1,
    },
    "ort-int8": {
        "name": "int8-dynamic",
        "suffix": ".int8.onnx",
        "runtime": "onnxruntime",
        "precision": "int8",
        "rank": 1,
    },
    "openvino-bf16": {"name": "bf16", "suffix": None, "runtime": "openvino", "precision": "bf16", "rank": 2},
}
DEFAULT_GRAPHS = ("encoder", "clip_head")


def weight_matmuls(onnx_path: Path) -> tuple[list[str], list[str]]:
    """(names of MatMul/Gemm nodes with a constant second input, names of the other MatMul/Gemm nodes)."""
    import onnx

    model = onnx.load(str(onnx_path))
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    weighted, other = [], []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            (weighted if node.input[1] in consts else other).append(node.name)
    return weighted, other


def quantize_outputs(onnx_path: Path, nodes: list[str]) -> bool:
    """Whether static int8 should also quantize the outputs of the MatMul/Gemm layers: True when any of the linear
    layers `nodes` reads a tensor of rank >= 4 (see the module docstring), from ONNX shape inference."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*model.graph.value_info, *model.graph.input)}
    chosen = set(nodes)
    return any(ranks.get(n.input[0], 4) >= 4 for n in model.graph.node if n.name in chosen)


def quantize_graph(
    src: Path,
    dst: Path,
    target: str,
    calib_cache: Path | None = None,
    exclude: str | None = None,
    attention: bool = False,
) -> int:
    """Write the quantised graph `dst`; returns how many MatMul/Gemm nodes were quantised.

    attention=True also quantises activation x activation matmuls (QK^T, AV) for `openvino-int8`.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    # Weights per output channel in 7 bits (reduce_range): CPUs without VNNI/AMX (AVX2 only, e.g. this project's
    # AMD EPYC CI machines) multiply u8 x s8 pairs into saturating int16 sums, which full-range weights overflow
    # (parity gates failed there); on VNNI/AMX machines the cost is < 1 bit of weight resolution.
    weighted, other = weight_matmuls(src)
    candidates = weighted + (other if attention and target != "ort-int8" else [])
    chosen = [n for n in candidates if not (exclude and re.search(exclude, n))]
    if target == "ort-int8":
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=chosen,
            per_channel=True,
            reduce_range=True,
        )
        return len(chosen)
    if calib_cache is None or not calib_cache.is_file():
        raise ValueError(f"static int8 needs a calibration cache (calibrate_minmax) for {src.name}")
    extra: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if not quantize_outputs(src, [n for n in chosen if n in weighted]):
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
    quantize_static(
        src,
        dst,
        None,
        calibration_cache_path=calib_cache,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=chosen,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options=extra,
    )
    return len(chosen)


def _fast_runner(bundle: Path, manifest: Manifest, spec: dict[str, Any], files: dict[str, str]) -> OnnxGraphs:
    paths = {g: bundle / files.get(g, manifest.graphs[g].file) for g in GRAPHS}
    precision = "bf16" if spec["runtime"] == "openvino" else "f32"
    return OnnxGraphs(paths, runtime=spec["runtime"], precision=precision)


class ParityProbe:
    """Fresh generated inputs + a memoised fp32 ONNX Runtime reference; `report(fast)` -> parity figures."""

    def __init__(self, bundle: Path, manifest: Manifest, samples: int, seed: int) -> None:
        pre = manifest.preprocess
        self.ref = CachedRunner(OnnxGraphs({g: bundle / manifest.graphs[g].file for g in GRAPHS}))
        s = seed + 1000
        self.images = generated_images(samples, pre.image_size, pre.pixel_mean, pre.pixel_std, seed=s)
        self.prompts = random_prompts(12, pre.image_size, manifest.embed_grid, seed=s)
        self.ids = random_text_ids(9, seed=s)

    def report(self, fast: Any) -> dict[str, Any]:
        return parity_report(self.ref, fast, self.images, self.prompts, self.ids, n_background=1)


def select_graphs(
    probe: ParityProbe, make_fast: Any, graphs: tuple[str, ...]
) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
    """Largest passing set of quantised graphs: all of them if the gates hold; else each graph alone, keeping
    those that pass alone, re-checked together. Returns (kept graphs, their joint parity, per-graph parity)."""
    joint = probe.report(make_fast(graphs))
    if joint["passed"] or len(graphs) == 1:
        return (graphs if joint["passed"] else ()), joint, {}
    alone = {g: probe.report(make_fast((g,))) for g in graphs}
    kept = tuple(g for g in graphs if alone[g]["passed"])
    if len(kept) > 1:
        joint = probe.report(make_fast(kept))
        while not joint["passed"] and len(kept) > 1:  # drop the weakest until the joint gates hold
            kept = tuple(
                sorted(kept, key=lambda g: -alone[g]["text_segment_iou"] - alone[g]["decoder_mask_iou"])
            )[:-1]
            joint = probe.report(make_fast(kept))
    elif kept:
        joint = alone[kept[0]]
    return (kept if joint["passed"] else ()), joint, alone


def _quantize_files(
    bundle: Path, manifest: Manifest, target: str, spec: dict[str, Any], graphs: tuple[str, ...], opts: dict
) -> tuple[dict[str, str], dict[str, int]]:
    """Write the target's quantised graph files; (graph -> file name, graph -> quantised node count)."""
    from tqdm import tqdm

    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    if not spec["suffix"]:
        return files, counts
    static = target == "openvino-int8"
    caches = (
        calibration_caches(bundle, manifest, graphs, opts["calib_samples"], opts["seed"]) if static else {}
    )
    for graph in tqdm(graphs, desc=f"quantize {target}", unit="graph"):
        src = bundle / manifest.graphs[graph].file
        files[graph] = Path(manifest.graphs[graph].file).stem + spec["suffix"]
        counts[graph] = quantize_graph(
            src, bundle / files[graph], target, caches.get(graph), opts["exclude"], opts["attention"]
        )
    return files, counts


def _variant_entry(
    bundle: Path, graph: str, file_name: str, target: str, spec: dict[str, Any], opts: dict, parity: Parity
) -> Variant:
    calibration = None
    if target == "openvino-int8":
        calibration = {"samples": opts["calib_samples"], "seed": opts["seed"], "inputs": "generated images"}
    return Variant(
        name=spec["name"], file=file_name, sha256=sha256_file(bundle / file_name), target=target,
        runtimes=[spec["runtime"]], precision=spec["precision"], rank=spec["rank"],
        quantized_nodes=opts["counts"].get(graph, 0), excluded_pattern=opts["exclude"],
        calibration=calibration, parity=parity,
    )  # fmt: skip


def _record_run(
    bundle: Path,
    manifest: Manifest,
    target: str,
    spec: dict,
    opts: dict,
    files: dict[str, str],
    graphs: tuple[str, ...],
    kept: tuple[str, ...],
    parity: dict[str, Any],
) -> str | None:
    """List the kept variants, remove the files of the others and record the run in manifest.optimizations
    (kept graphs, or why none was kept); returns that reason (None when something was kept)."""
    for graph in kept:
        file_name = files.get(graph, manifest.graphs[graph].file)
        entry_parity = Parity(**parity, with_graphs=list(kept))
        manifest.upsert_variant(
            graph, _variant_entry(bundle, graph, file_name, target, spec, opts, entry_parity)
        )
    for graph in set(graphs) - set(kept):  # a failed variant is not listed; its file is removed
        if graph in files:
            (bundle / files[graph]).unlink(missing_ok=True)
    failed = {k: parity[k] for k in GATES if k in parity and parity[k] < GATES[k]}
    reason = None if kept else f"parity gates failed for every graph subset tried: {failed}"
    record = OptimizeRecord(target=target, variant=spec["name"], kept=list(kept), passed=bool(kept),
                            reason=reason, parity=parity, at=utc_now())  # fmt: skip
    manifest.optimizations = [r for r in manifest.optimizations if r.variant != spec["name"]] + [record]
    return reason


def optimize(
    bundle: Path,
    target: str,
    graphs: tuple[str, ...] = DEFAULT_GRAPHS,
    calib_samples: int = 4,
    parity_samples: int = 2,
    seed: int = 0,
    exclude: str | None = None,
    attention: bool = False,
) -> dict[str, Any]:
    """Produce the target's variants, measure parity, record them (and this run, kept graphs or why none) in
    the manifest; returns a summary. Variants whose gates failed are not listed and their files are removed."""
    bundle = Path(bundle)
    manifest = Manifest.read(bundle)
    spec = dict(TARGETS[target])
    if attention and target == "openvino-int8":
        spec.update(name="int8-qdq-attn", suffix=".int8attn.qdq.onnx", rank=0)
    opts = {"calib_samples": calib_samples, "seed": seed, "exclude": exclude, "attention": attention}
    t0 = time.perf_counter()
    files, opts["counts"] = _quantize_files(bundle, manifest, target, spec, graphs, opts)
    quantize_s = time.perf_counter() - t0
    probe = ParityProbe(bundle, manifest, parity_samples, seed)

    def make_fast(chosen: tuple[str, ...]) -> OnnxGraphs:
        return _fast_runner(bundle, manifest, spec, {g: files[g] for g in chosen if g in files})

    kept, parity, alone = select_graphs(probe, make_fast, graphs)
    reason = _record_run(bundle, manifest, target, spec, opts, files, graphs, kept, parity)
    manifest.refresh_fingerprint()
    manifest.write(bundle)
    return {
        "target": target, "variant": spec["name"], "kept": list(kept),
        "dropped": sorted(set(graphs) - set(kept)), "files": {g: files[g] for g in kept if g in files},
        "quantized_nodes": opts["counts"], "quantize_s": round(quantize_s, 1), "parity": parity,
        "parity_per_graph": alone, "reason": reason,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------- CLI
def add_optimize_parser(subparsers: Any) -> None:
    """Register `optimize` on the model_export argparse subparsers."""
    p = subparsers.add_parser(
        "optimize", help="write reduced-precision graph variants (int8 / bf16) + parity"
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--target", choices=sorted(TARGETS), default="openvino-int8")
    p.add_argument("--graphs", default=",".join(DEFAULT_GRAPHS), help="comma-separated graph names")
    p.add_argument("--calib-samples", type=int, default=4, help="generated calibration images (static int8)")
    p.add_argument("--parity-samples", type=int, default=2, help="generated images for the parity figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", default=None, help="regex of node names kept float")
    p.add_argument("--int8-attention", action="store_true", help="also quantise QK^T / AV matmuls")
    p.set_defaults(func=cmd_optimize)


def cmd_optimize(args: argparse.Namespace) -> int:
    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip())
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown:
        print(f"unknown graph(s) {unknown}; known: {', '.join(GRAPHS)}", flush=True)
        return 2
    summary = optimize(
        args.bundle,
        args.target,
        graphs,
        args.calib_samples,
        args.parity_samples,
        args.seed,
        args.exclude,
        args.int8_attention,
    )
    print(json.dumps(summary, indent=2))
    return 0 if summary["kept"] else 1
