"""Reduced-precision variants of a bundle's graphs: `python -m model_export optimize BUNDLE --target T`.

Targets (the plain fp32 graphs are never touched; variants are extra files listed in manifest["variants"]):

- `openvino-int8`: ONNX Runtime static quantisation in QDQ format of every MatMul/Gemm whose second input is a
  weight (the linear layers, ~70% of a ViT's FLOPs): int8 symmetric activations (MinMax ranges), int8
  per-channel weights; with `--int8-attention` (variant `int8-qdq-attn`) also the activation x activation
  matmuls (QK^T, AV). Softmax, norms and everything else stay float. OpenVINO reads the QuantizeLinear /
  DequantizeLinear pairs as FakeQuantize and runs those layers in int8 (AMX-int8 / VNNI), the rest under its
  bf16 hint. Files `<graph>.int8.qdq.onnx` / `<graph>.int8attn.qdq.onnx`.
  Calibration (`calibrate_minmax`, cached in BUNDLE/.calibration/ and shared by both variants): generated
  images through the fp32 encoder, whose outputs (patch tokens; image embeddings + random prompts) calibrate
  the CLIP head and SAM decoder; random CLIP token ids for the text encoder.
- `ort-int8`: ONNX Runtime dynamic quantisation (int8 weights, activations quantised per call) for the
  `onnxruntime-int8` backend. Files `<graph>.int8.onnx`.
- `openvino-bf16`: no new file; measures the plain graphs under OpenVINO's bf16 hint and records it.

Default graphs: encoder and clip_head, the two big ones (the SAM decoder is small, and the text encoder's
outputs are cached per prompt and it is the graph text-segment parity is most sensitive to: both run at the
backend's float precision, bf16 in OpenVINO; `--graphs` quantises them too). `--exclude REGEX` keeps matching
node names float (for a layer that breaks parity).

Every variant entry records: name, file, sha256, target, runtimes, precision, quantized_nodes and `parity`:
the figures of model_export.parity.parity_report for the whole target path (all of its graphs swapped in at
once, under its runtime) against the fp32 graphs in ONNX Runtime, with `passed` = all gates held. Backends
choose a variant automatically only when it passed.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from model_export.manifest import artifact_hashes, file_sha256, fingerprint, read_manifest, write_manifest
from model_export.parity import (
    CachedRunner,
    OnnxGraphs,
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
ALL_GRAPHS = ("encoder", "clip_head", "text_encoder", "sam_decoder")


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


def _gate_tensors(model: Any, tensors: list[str]) -> None:
    """Add calib_ReduceMin_i / calib_ReduceMax_i graph outputs for tensors[i], and make every consumer of the
    tensor read `tensor + 0 * (min + max)` instead: the reductions must then run before the tensor's consumers,
    so the runtime cannot postpone them and keep every large activation (attention maps) alive until the end."""
    import onnx
    from onnx import helper, numpy_helper

    index = {name: i for i, name in enumerate(tensors)}
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "calib_zero"))
    for node in model.graph.node:  # consumers read the gated tensor
        for j, name in enumerate(node.input):
            if name in index:
                node.input[j] = f"calib_gated_{index[name]}"

    def gate(name: str) -> list[Any]:
        if name not in index:
            return []
        i = index[name]
        lo, hi, s, z = (f"calib_ReduceMin_{i}", f"calib_ReduceMax_{i}", f"calib_sum_{i}", f"calib_zero_{i}")
        return [
            helper.make_node("ReduceMin", [name], [lo], keepdims=0, name=lo),
            helper.make_node("ReduceMax", [name], [hi], keepdims=0, name=hi),
            helper.make_node("Add", [lo, hi], [s], name=s),
            helper.make_node("Mul", [s, "calib_zero"], [z], name=z),
            helper.make_node("Add", [name, z], [f"calib_gated_{i}"], name=f"calib_gated_{i}"),
        ]

    nodes = [g for i in model.graph.input for g in gate(i.name)]
    for node in list(model.graph.node):
        nodes += [node, *(g for o in node.output for g in gate(o))]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for i in range(len(tensors)):
        for op in ("ReduceMin", "ReduceMax"):
            model.graph.output.append(
                helper.make_tensor_value_info(f"calib_{op}_{i}", onnx.TensorProto.FLOAT, [])
            )


def calibrate_minmax(
    src: Path,
    feeds: list[dict[str, np.ndarray]],
    out_json: Path,
    nodes: list[str] | None = None,
    keep: tuple[str, ...] = (),
) -> dict[str, list[np.ndarray]]:
    """Min/max of every float input/output of the MatMul/Gemm `nodes` (default all) over `feeds`, saved as an onnxruntime
    calibration cache (`quantize_static(calibration_cache_path=...)`). Returns the graph outputs named in `keep`,
    one array per feed (the encoder's outputs feed the CLIP head's and decoder's calibration).

    ORT's own calibrator runs the augmented model with every graph optimisation off and its memory arena on,
    which needs > 20 GB for a ViT-B at 1024 px (12 x 4096 x 4096 attention maps); here the augmented model
    (a global ReduceMin/ReduceMax right after each tensor's producer) runs optimised, without the arena, one
    sample at a time.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    model = onnx.load(str(src))
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    int_inputs = {i.name for i in model.graph.input if i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT}
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    chosen = [n for n in matmuls if nodes is None or n.name in nodes]
    tensors = sorted({t for n in chosen for t in (*n.input, *n.output)} - consts - int_inputs - {""})
    _gate_tensors(model, tensors)
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = False
    with tempfile.TemporaryDirectory() as tmp:  # from a file: no second in-memory copy of the weights
        onnx.save(model, f"{tmp}/augmented.onnx")
        del model
        session = ort.InferenceSession(f"{tmp}/augmented.onnx", opts, providers=["CPUExecutionProvider"])
    outputs = [f"calib_{op}_{i}" for i in range(len(tensors)) for op in ("ReduceMin", "ReduceMax")]
    lo = np.full(len(tensors), np.inf, np.float32)
    hi = np.full(len(tensors), -np.inf, np.float32)
    kept: dict[str, list[np.ndarray]] = {k: [] for k in keep}
    for feed in feeds:
        result = session.run([*keep, *outputs], feed)
        for k, value in zip(keep, result, strict=False):
            kept[k].append(value)
        values = np.asarray(result[len(keep) :], np.float32).reshape(-1, 2)
        lo, hi = np.minimum(lo, values[:, 0]), np.maximum(hi, values[:, 1])
    data = {
        name: (np.array(lo[i], np.float32), np.array(hi[i], np.float32)) for i, name in enumerate(tensors)
    }
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), out_json)
    return kept


def calibration_caches(
    bundle: Path, manifest: dict[str, Any], graphs: tuple[str, ...], samples: int, seed: int
) -> dict[str, Path]:
    """Per graph, a MinMax calibration cache over ALL its MatMul/Gemm tensors (shared by the int8 variants),
    kept in BUNDLE/.calibration/ keyed by the graph's sha256, sample count and seed.

    Inputs: `samples` generated images (encoder); their fp32 patch tokens (CLIP head) and image embeddings with
    random prompts (SAM decoder), both taken from the encoder's calibration run; random token ids (text)."""
    cache_dir = bundle / ".calibration"
    cache_dir.mkdir(exist_ok=True)
    graph_file = {g: bundle / manifest["graphs"][g]["file"] for g in ALL_GRAPHS}
    paths = {
        g: cache_dir / f"{g}-{manifest['graphs'][g]['sha256'][:12]}-n{samples}-s{seed}.json" for g in graphs
    }
    missing = [g for g in graphs if not paths[g].is_file()]
    pre = manifest["preprocess"]
    if set(missing) & {"encoder", "clip_head", "sam_decoder"}:
        images = generated_images(samples, pre["image_size"], pre["pixel_mean"], pre["pixel_std"], seed=seed)
        out = calibrate_minmax(
            graph_file["encoder"],
            [{"image": images[i : i + 1]} for i in range(samples)],
            paths.get("encoder", cache_dir / "encoder.tmp.json"),
            keep=("image_embeddings", "patch_tokens"),
        )
        if "clip_head" in missing:
            feeds = [{"patch_tokens": t} for t in out["patch_tokens"]]
            calibrate_minmax(graph_file["clip_head"], feeds, paths["clip_head"])
        if "sam_decoder" in missing:
            grid = pre["image_size"] // manifest["model"]["config"]["encoder"]["patch_size"]
            prompts = random_prompts(6, pre["image_size"], grid, seed=seed)
            feeds = [{"image_embeddings": e, **prompts} for e in out["image_embeddings"]]
            calibrate_minmax(graph_file["sam_decoder"], feeds, paths["sam_decoder"])
    if "text_encoder" in missing:
        ids = random_text_ids(max(2, samples) * 4, seed=seed)
        feeds = [{"input_ids": ids[i : i + 4]} for i in range(0, len(ids), 4)]
        calibrate_minmax(graph_file["text_encoder"], feeds, paths["text_encoder"])
    return paths


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
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return len(chosen)


def _fast_runner(
    bundle: Path, manifest: dict[str, Any], spec: dict[str, Any], files: dict[str, str]
) -> OnnxGraphs:
    paths = {g: bundle / files.get(g, manifest["graphs"][g]["file"]) for g in ALL_GRAPHS}
    precision = "bf16" if spec["runtime"] == "openvino" else "f32"
    return OnnxGraphs(paths, runtime=spec["runtime"], precision=precision)


class ParityProbe:
    """Fresh generated inputs + a memoised fp32 ONNX Runtime reference; `report(fast)` -> parity figures."""

    def __init__(self, bundle: Path, manifest: dict[str, Any], samples: int, seed: int) -> None:
        pre = manifest["preprocess"]
        grid = pre["image_size"] // manifest["model"]["config"]["encoder"]["patch_size"]
        self.ref = CachedRunner(OnnxGraphs({g: bundle / manifest["graphs"][g]["file"] for g in ALL_GRAPHS}))
        s = seed + 1000
        self.images = generated_images(
            samples, pre["image_size"], pre["pixel_mean"], pre["pixel_std"], seed=s
        )
        self.prompts = random_prompts(12, pre["image_size"], grid, seed=s)
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


def _record(manifest: dict[str, Any], graph: str, entry: dict[str, Any]) -> None:
    variants = manifest.setdefault("variants", {})
    variants[graph] = [v for v in variants.get(graph, []) if v.get("name") != entry["name"]] + [entry]


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
    """Produce the target's variants, measure parity, record them in manifest.json; returns a summary."""
    from tqdm import tqdm

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    spec = dict(TARGETS[target])
    if attention and target == "openvino-int8":
        spec.update(name="int8-qdq-attn", suffix=".int8attn.qdq.onnx", rank=0)
    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    if spec["suffix"]:
        static = target == "openvino-int8"
        caches = calibration_caches(bundle, manifest, graphs, calib_samples, seed) if static else {}
        for graph in tqdm(graphs, desc=f"quantize {target}", unit="graph"):
            src = bundle / manifest["graphs"][graph]["file"]
            files[graph] = Path(manifest["graphs"][graph]["file"]).stem + spec["suffix"]
            counts[graph] = quantize_graph(
                src, bundle / files[graph], target, caches.get(graph), exclude, attention
            )
    quantize_s = time.perf_counter() - t0
    probe = ParityProbe(bundle, manifest, parity_samples, seed)

    def make_fast(chosen: tuple[str, ...]) -> OnnxGraphs:
        return _fast_runner(bundle, manifest, spec, {g: files[g] for g in chosen if g in files})

    kept, parity, alone = select_graphs(probe, make_fast, graphs)
    for graph in kept:
        file_name = files.get(graph, manifest["graphs"][graph]["file"])
        entry = {
            "name": spec["name"],
            "file": file_name,
            "sha256": file_sha256(bundle / file_name),
            "target": target,
            "runtimes": [spec["runtime"]],
            "precision": spec["precision"],
            "rank": spec["rank"],
            "quantized_nodes": counts.get(graph, 0),
            "excluded_pattern": exclude,
            "calibration": {"samples": calib_samples, "seed": seed, "inputs": "generated images"}
            if target == "openvino-int8"
            else None,
            "parity": {**parity, "with_graphs": list(kept)},
        }
        _record(manifest, graph, entry)
    for graph in set(graphs) - set(kept):  # a failed variant is not listed; its file is removed
        if graph in files:
            (bundle / files[graph]).unlink(missing_ok=True)
    manifest["fingerprint"] = fingerprint(artifact_hashes(manifest))
    write_manifest(bundle, manifest)
    return {
        "target": target,
        "variant": spec["name"],
        "kept": list(kept),
        "dropped": sorted(set(graphs) - set(kept)),
        "files": {g: files[g] for g in kept if g in files},
        "quantized_nodes": counts,
        "quantize_s": round(quantize_s, 1),
        "parity": parity,
        "parity_per_graph": alone,
    }


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
    unknown = [g for g in graphs if g not in ALL_GRAPHS]
    if unknown:
        print(f"unknown graph(s) {unknown}; known: {', '.join(ALL_GRAPHS)}", flush=True)
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
