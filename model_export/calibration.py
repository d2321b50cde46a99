"""MinMax calibration for static int8 (`python -m model_export optimize --target openvino-int8`).

`calibration_caches` writes, per graph, an onnxruntime calibration cache (min/max of every MatMul/Gemm input and
output) over generated inputs, kept in BUNDLE/.calibration/ and shared by the int8 variants; `calibrate_minmax`
is the memory-frugal calibrator behind it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from samclip_bundle.graphs import GRAPHS
from samclip_bundle.manifest import Manifest
from samclip_bundle.parity import generated_images, random_prompts, random_text_ids


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
    bundle: Path, manifest: Manifest, graphs: tuple[str, ...], samples: int, seed: int
) -> dict[str, Path]:
    """Per graph, a MinMax calibration cache over ALL its MatMul/Gemm tensors (shared by the int8 variants),
    kept in BUNDLE/.calibration/ keyed by the graph's sha256, sample count and seed.

    Inputs: `samples` generated images (encoder); their fp32 patch tokens (CLIP head) and image embeddings with
    random prompts (SAM decoder), both taken from the encoder's calibration run; random token ids (text)."""
    cache_dir = bundle / ".calibration"
    cache_dir.mkdir(exist_ok=True)
    graph_file = {g: bundle / manifest.graphs[g].file for g in GRAPHS}
    paths = {g: cache_dir / f"{g}-{manifest.graphs[g].sha256[:12]}-n{samples}-s{seed}.json" for g in graphs}
    missing = [g for g in graphs if not paths[g].is_file()]
    pre = manifest.preprocess
    if set(missing) & {"encoder", "clip_head", "sam_decoder"}:
        images = generated_images(samples, pre.image_size, pre.pixel_mean, pre.pixel_std, seed=seed)
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
            prompts = random_prompts(6, pre.image_size, manifest.embed_grid, seed=seed)
            feeds = [{"image_embeddings": e, **prompts} for e in out["image_embeddings"]]
            calibrate_minmax(graph_file["sam_decoder"], feeds, paths["sam_decoder"])
    if "text_encoder" in missing:
        ids = random_text_ids(max(2, samples) * 4, seed=seed)
        feeds = [{"input_ids": ids[i : i + 4]} for i in range(0, len(ids), 4)]
        calibrate_minmax(graph_file["text_encoder"], feeds, paths["text_encoder"])
    return paths
