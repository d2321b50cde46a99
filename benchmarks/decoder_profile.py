"""Where the SAM decoder's time goes: FLOPs counted per op and time measured per op, for one prompt batch.

    python benchmarks/decoder_profile.py --bundle /tmp/bundles/vit_b [--graph FILE.onnx ...] [--prompts K]
        [--runtime openvino|onnxruntime] [--precision bf16|f32] [--repeats 30] [--depth 3] [--top 15]
        [--json out.json]

Inputs: the bundle's `sam_decoder` graph and every decoder variant listed in its manifest (or the `--graph`
files given), fed a random image embedding (1, C, h, w) and K box prompts (N = 2 tokens: the box corners,
labels 2 and 3, no mask input) - what one cached `/segment/prompt` with K boxes runs: by default each graph is
specialised like the service's OpenVINO box/point-only decoder (mask inputs folded to zero, static shapes;
service/runtime/openvino_decoder.py), and under OpenVINO compiled and fed as the service does with its default
float16 cache (the embedding channels-last at a float16 port);
`--mask-path` keeps the mask-prompt inputs (zeros).

FLOPs: the graph is read by OpenVINO and reshaped to those static shapes, so every op has concrete shapes.
Multiply-adds (MACs) are counted for MatMul ([.., M, K] x [.., K, N]: M*N*K per batch item), Convolution
(output elements x C_in/groups x kernel area) and ConvolutionBackpropData (input elements x C_out x kernel
area); every other op is counted as one operation per output element (`elementwise`, reported apart).
Time: the runtime's own per-node profiler over `--repeats` calls (OpenVINO PERF_COUNT `real_time`, or ONNX
Runtime's profiling JSON `kernel_time` events), median per node.
Both are grouped by module scope: the first `--depth` components of the ONNX node name (the exporter names nodes
by the PyTorch module path, e.g. /transformer/layers.0/cross_attn_token_to_image/k_proj/MatMul). Nothing is
asserted on time: compare the rows and the graphs of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from samclip_bundle.manifest import Manifest  # noqa: E402

_MAC_OPS = ("MatMul", "Convolution", "ConvolutionBackpropData", "GroupConvolution")
_FREE_OPS = ("Parameter", "Constant", "Result", "ShapeOf", "Convert")


# --- inputs ------------------------------------------------------------------------------------------------
def box_feeds(manifest: Manifest, prompts: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Decoder inputs for `prompts` boxes on a random embedding (all float32, INPUT frame coordinates)."""
    cfg = manifest.model.config
    size, grid, chans = manifest.preprocess.image_size, manifest.embed_grid, cfg["encoder"]["out_chans"]
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.uniform(0, size, (prompts, 2, 2)), axis=1).astype(np.float32)  # (K, 2, 2) [x, y]
    return {
        "image_embeddings": rng.standard_normal((1, chans, grid, grid)).astype(np.float32),
        "point_coords": corners,
        "point_labels": np.tile(np.array([2.0, 3.0], np.float32), (prompts, 1)),
        "mask_input": np.zeros((prompts, 1, 4 * grid, 4 * grid), np.float32),
        "has_mask_input": np.zeros((prompts,), np.float32),
    }


def scope(name: str, depth: int) -> str:
    """'/transformer/layers.0/self_attn/q_proj/MatMul' -> 'transformer/layers.0/self_attn' (depth 3)."""
    parts = [p for p in name.split("/") if p]
    return "/".join(parts[:-1][:depth]) or "(top level)"


# --- FLOPs -------------------------------------------------------------------------------------------------
def _matmul_macs(op: Any) -> int:
    a, b = (list(op.get_input_shape(i)) for i in range(2))
    attrs = op.get_attributes()
    a, b = ([1, *a] if len(a) == 1 else a), ([*b, 1] if len(b) == 1 else b)
    m, k = (a[-1], a[-2]) if attrs.get("transpose_a") else (a[-2], a[-1])
    n = b[-2] if attrs.get("transpose_b") else b[-1]
    batch = int(np.prod(list(op.get_output_shape(0))[:-2] or [1]))
    return int(batch * m * n * k)


def op_macs(op: Any) -> tuple[int, int]:
    """(multiply-adds, elementwise operations) of one OpenVINO op with static shapes."""
    kind = op.get_type_name()
    if kind in _FREE_OPS:
        return 0, 0
    out = int(np.prod(list(op.get_output_shape(0)))) if op.get_output_size() else 0
    if kind == "MatMul":
        return _matmul_macs(op), 0
    if kind in ("Convolution", "GroupConvolution"):  # weights (O, I, k...) / (G, O/G, I/G, k...)
        w = list(op.get_input_shape(1))
        return out * int(np.prod(w[1:] if kind == "Convolution" else w[2:])), 0
    if (
        kind == "ConvolutionBackpropData"
    ):  # weights (C_in, C_out, kh, kw): every input pixel x C_out x kh x kw
        x, w = list(op.get_input_shape(0)), list(op.get_input_shape(1))
        return int(np.prod(x)) * int(np.prod(w[1:])), 0
    return 0, out


def _op_scope(op: Any, depth: int) -> str:
    """Scope of an op: from its name, else from its output tensors' ONNX names, else from a consumer's name
    (ops that the ONNX importer created without a name, e.g. ConvolutionBackpropData_1950)."""
    names = [op.get_friendly_name()]
    for output in op.outputs():
        names += sorted(output.get_names())
        names += [t.get_node().get_friendly_name() for t in output.get_target_inputs()]
    return next((scope(n, depth) for n in names if n.startswith("/")), scope(names[0], depth))


def static_model(path: Path, feeds: dict[str, np.ndarray]) -> Any:
    """The ONNX graph read by OpenVINO and reshaped to the feeds' static shapes; without the mask inputs in
    `feeds`, specialised like the service's box/point-only decoder (mask-prompt branch folded away)."""
    import openvino as ov

    from service.runtime.openvino_decoder import without_mask_prompts

    model = ov.Core().read_model(str(path))
    if "mask_input" not in feeds:
        model = without_mask_prompts(model, 4 * feeds["image_embeddings"].shape[-1])
    model.reshape({p.get_any_name(): list(feeds[p.get_any_name()].shape) for p in model.inputs})
    return model


def count_flops(model: Any, depth: int) -> tuple[dict[str, Any], dict[str, str]]:
    """MACs and elementwise ops per op and per scope of a static-shape model; also op name -> scope."""
    ops, scopes, names = [], defaultdict(lambda: [0, 0]), {}
    for op in model.get_ordered_ops():
        where = names[op.get_friendly_name()] = _op_scope(op, depth)
        macs, elem = op_macs(op)
        if macs or elem:
            ops.append({"name": op.get_friendly_name(), "type": op.get_type_name(), "macs": macs,
                        "elementwise": elem, "scope": where})  # fmt: skip
            scopes[where][0] += macs
            scopes[where][1] += elem
    flops = {
        "macs": sum(o["macs"] for o in ops),
        "elementwise": sum(o["elementwise"] for o in ops),
        "scopes": {k: {"macs": v[0], "elementwise": v[1]} for k, v in scopes.items()},
        "top_ops": sorted(ops, key=lambda o: -o["macs"])[:40],
    }
    return flops, names


# --- time per op -------------------------------------------------------------------------------------------
class OpenVinoProfiler:
    """One compiled static-shape model with PERF_COUNT; `call()` runs it once and keeps its per-node times.
    Compiled and fed as the service runs it with its default float16 cache (service/runtime/openvino.py): the
    image embedding at a float16 port, channels-last (`channels_last_input`),
    and the compile properties of its variant."""

    def __init__(self, model: Any, feeds: dict, precision: str, threads: int, variant: str | None) -> None:
        import openvino as ov

        from service.runtime.layout import to_channels_last
        from service.runtime.openvino import VARIANT_CONFIG
        from service.runtime.openvino_decoder import channels_last_input

        channels_last_input(model)
        embedding = to_channels_last(feeds["image_embeddings"], np.float16)
        feeds = {**feeds, "image_embeddings": embedding}
        steps = ov.preprocess.PrePostProcessor(model)
        steps.input("image_embeddings").tensor().set_element_type(ov.Type.f16)
        model = steps.build()
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
        config.update(VARIANT_CONFIG.get(("sam_decoder", variant), {}))  # as the service compiles that graph
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
        self.feeds, self.walls, self.per_node = feeds, [], defaultdict(list)

    def call(self, keep: bool) -> None:
        start = time.perf_counter()
        self.request.infer(self.feeds)
        if not keep:
            return
        self.walls.append((time.perf_counter() - start) * 1000.0)
        for info in self.request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                key = (info.node_name, info.node_type, info.exec_type)
                self.per_node[key].append(info.real_time.total_seconds() * 1000.0)


class OrtProfiler:
    """ONNX Runtime session with profiling; per-node `kernel_time` events are read at the end."""

    def __init__(self, path: Path, feeds: dict, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "decoder")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.feeds, self.walls, self.per_node, self.skip = feeds, [], defaultdict(list), 0

    def call(self, keep: bool) -> None:
        start = time.perf_counter()
        self.session.run(None, self.feeds)
        if keep:
            self.walls.append((time.perf_counter() - start) * 1000.0)
        else:
            self.skip += 1

    def collect(self) -> None:
        events = json.loads(Path(self.session.end_profiling()).read_text())
        runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        first = runs[self.skip] if len(runs) > self.skip else 0
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
                op = e.get("args", {}).get("op_name", "")
                self.per_node[(e["name"].removesuffix("_kernel_time"), op, op)].append(e["dur"] / 1000.0)


def time_summary(prof: Any, names: dict[str, str], depth: int) -> dict[str, Any]:
    """Median wall ms per call and median ms per executed node, grouped by scope."""
    nodes = [
        {"name": name, "type": kind, "exec": impl, "ms": statistics.median(ts),
         "scope": names.get(name, scope(name, depth))}
        for (name, kind, impl), ts in prof.per_node.items()
    ]  # fmt: skip
    scopes: dict[str, float] = defaultdict(float)
    for n in nodes:
        scopes[n["scope"]] += n["ms"]
    return {
        "wall_ms": statistics.median(prof.walls),
        "wall_min_ms": min(prof.walls),
        "nodes_ms": sum(n["ms"] for n in nodes),
        "scopes": dict(scopes),
        "top_nodes": sorted(nodes, key=lambda n: -n["ms"])[:40],
    }


def profile_graphs(graphs: dict[str, Path], feeds: dict, args: argparse.Namespace) -> dict[str, Any]:
    """FLOPs and per-node times of every graph; calls are interleaved across the graphs (round robin), so
    load changes on a shared machine hit every graph alike."""
    flops, names, profs = {}, {}, {}
    for label, path in graphs.items():
        model = static_model(path, feeds)
        flops[label], names[label] = count_flops(model, args.depth)
        if args.runtime == "openvino":
            variant = None if label == "plain" else label
            profs[label] = OpenVinoProfiler(model, feeds, args.precision, args.threads, variant)
        else:
            profs[label] = OrtProfiler(path, feeds, args.threads)
    for i in range(args.repeats + 3):  # 3 warm-up rounds
        for prof in profs.values():
            prof.call(keep=i >= 3)
    results = {}
    for label, prof in profs.items():
        if hasattr(prof, "collect"):
            prof.collect()
        times = time_summary(prof, names[label], args.depth)
        results[label] = {"file": str(graphs[label]), "flops": flops[label], "time": times}
    return results


# --- report ------------------------------------------------------------------------------------------------
def decoder_graphs(bundle: Path, extra: list[Path]) -> dict[str, Path]:
    """label -> ONNX file: the plain decoder, then each decoder variant of the manifest, then `extra`."""
    manifest = Manifest.read(bundle)
    graphs = {"plain": bundle / manifest.graphs["sam_decoder"].file}
    for entry in manifest.variants.get("sam_decoder", []):
        graphs[entry.name] = bundle / entry.file
    for path in extra:
        graphs[path.stem] = path
    return graphs


def print_graph(label: str, res: dict[str, Any], args: argparse.Namespace) -> None:
    flops, times = res["flops"], res["time"]
    gmacs = flops["macs"] / 1e9
    print(
        f"\n== {label}: {Path(res['file']).name}  {gmacs:.3f} G MACs per call "
        f"({gmacs / args.prompts:.3f} G per prompt), {flops['elementwise'] / 1e6:.1f} M elementwise ops; "
        f"{args.runtime} {args.precision}: {times['wall_ms']:.2f} ms per call (min {times['wall_min_ms']:.2f}), "
        f"per-node sum {times['nodes_ms']:.2f} ms"
    )
    print(f"{'scope':<58} {'G MACs':>8} {'%':>6} {'M elem':>8} {'ms':>8} {'%':>6}")
    names = sorted(set(flops["scopes"]) | set(times["scopes"]), key=lambda s: -times["scopes"].get(s, 0.0))
    for name in names:
        f = flops["scopes"].get(name, {"macs": 0, "elementwise": 0})
        ms = times["scopes"].get(name, 0.0)
        print(
            f"{name[:58]:<58} {f['macs'] / 1e9:>8.3f} {100 * f['macs'] / max(flops['macs'], 1):>6.1f} "
            f"{f['elementwise'] / 1e6:>8.2f} {ms:>8.3f} {100 * ms / max(times['nodes_ms'], 1e-9):>6.1f}"
        )
    print(f"top {args.top} executed nodes by time:")
    for n in times["top_nodes"][: args.top]:
        print(f"  {n['ms']:>8.3f} ms  {n['type'][:18]:<18} {n['exec'][:26]:<26} {n['name'][:80]}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("/tmp/bundles/vit_b"))
    p.add_argument("--graph", type=Path, action="append", default=[], help="also profile this decoder file")
    p.add_argument("--only", default=None, help="profile only this label (plain or a variant name)")
    p.add_argument("--prompts", type=int, default=1, help="K boxes per call")
    p.add_argument("--runtime", choices=("openvino", "onnxruntime"), default="openvino")
    p.add_argument(
        "--mask-path",
        action="store_true",
        help="keep the mask-prompt inputs (the dynamic graph's work); default: the box-only specialisation",
    )
    p.add_argument("--precision", default="bf16", help="OpenVINO inference precision (bf16 | f32)")
    p.add_argument("--threads", type=int, default=0, help="0 = the runtime's default")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--depth", type=int, default=3, help="scope depth (module path components)")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Manifest.exists(args.bundle):
        raise SystemExit(f"no bundle at {args.bundle}")
    manifest = Manifest.read(args.bundle)
    feeds = box_feeds(manifest, args.prompts)
    if (
        not args.mask_path and args.runtime == "openvino"
    ):  # the service's box-only decoder (openvino_decoder.py)
        feeds = {k: v for k, v in feeds.items() if k not in ("mask_input", "has_mask_input")}
    graphs = decoder_graphs(args.bundle, args.graph)
    if args.only:
        graphs = {k: v for k, v in graphs.items() if k == args.only}
    results = profile_graphs(graphs, feeds, args)
    print(f"decoder profile: model {manifest.model.name}, {args.prompts} box prompt(s) per call")
    for label, res in results.items():
        print_graph(label, res, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"model": manifest.model.name, "prompts": args.prompts, "runtime": args.runtime,
                   "precision": args.precision, "graphs": results}  # fmt: skip
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
