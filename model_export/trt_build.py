"""TensorRT 10 engines for the bundle's four graphs: `python -m model_export build-trt BUNDLE --precision fp16`.

Pure-Python parts (optimisation profiles from the manifest, the fp32-layer rule, engine records, manifest
update) import and run without TensorRT; `build_engine` / `build_bundle_engines` import `tensorrt` lazily.

Profiles (min / opt / max per dynamic axis, shapes in the manifest's axis order):
  encoder      image (B,3,S,S)                B: 1 / min(4,N) / N          (--max-batch N)
  clip_head    patch_tokens (B,h,w,W)         B as encoder; h=w: g_min / h / g_max (default min(h,28) .. h)
  text_encoder input_ids (T,77) int64         T: 1 / min(80,T) / T         (--max-text-batch T; 80 = one label's
                                                                           prompt templates)
  sam_decoder  point_coords (K,P,2), point_labels (K,P), mask_input (K,1,4h,4w), has_mask_input (K,)
                                              K: 1 / min(16,M) / M, P: 1 / min(2,P) / P  (--max-prompts M,
                                              --max-points P; P counts SAM's padding point or the 2 box corners)
Engines have exactly the graph outputs of the bundle contract (samclip_bundle.graphs; format 2).

fp16: the FP16 builder flag plus OBEY_PRECISION_CONSTRAINTS, with normalisation (LayerNorm), softmax, every
reduction (ReduceMean/Sum of LayerNorm and L2-norm) and Pow layers pinned to fp32 (layer.precision and
set_output_type) — fp16 LayerNorm is what loses accuracy in ViT engines.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from samclip_bundle.cuda_probe import GpuProbe
from samclip_bundle.engines import engine_filename, sm_tag, upsert_engine_records
from samclip_bundle.graphs import GRAPHS
from samclip_bundle.hashing import sha256_file
from samclip_bundle.manifest import EngineRecord, Manifest

# axis roles of each graph input (axis index -> role); other axes are taken as fixed from the manifest.
AXIS_ROLES: dict[str, dict[str, dict[int, str]]] = {
    "encoder": {"image": {0: "batch"}},
    "clip_head": {"patch_tokens": {0: "batch", 1: "grid", 2: "grid"}},
    "text_encoder": {"input_ids": {0: "text_batch"}},
    "sam_decoder": {
        "image_embeddings": {0: "one"},
        "point_coords": {0: "prompts", 1: "points"},
        "point_labels": {0: "prompts", 1: "points"},
        "mask_input": {0: "prompts"},
        "has_mask_input": {0: "prompts"},
    },
}
FP32_LAYER_TYPES = frozenset({"NORMALIZATION", "SOFTMAX", "REDUCE"})
FP32_ELEMENTWISE_OPS = frozenset({"POW"})


@dataclass(frozen=True)
class ProfileLimits:
    """Upper bounds of the dynamic axes (see module docstring). Grid bounds default from the encoder grid."""

    max_batch: int = 8
    max_prompts: int = 64
    max_points: int = 34
    max_text_batch: int = 128
    min_grid: int | None = None
    max_grid: int | None = None

    def ranges(self, grid: int) -> dict[str, tuple[int, int, int]]:
        """role -> (min, opt, max)."""
        g_min = self.min_grid if self.min_grid is not None else min(grid, 28)
        g_max = self.max_grid if self.max_grid is not None else grid
        for name in ("max_batch", "max_prompts", "max_points", "max_text_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= g_min <= grid <= g_max:
            raise ValueError(f"grid range must satisfy 1 <= min ({g_min}) <= {grid} <= max ({g_max})")
        return {
            "one": (1, 1, 1),
            "batch": (1, min(4, self.max_batch), self.max_batch),
            "grid": (g_min, grid, g_max),
            "text_batch": (1, min(80, self.max_text_batch), self.max_text_batch),
            "prompts": (1, min(16, self.max_prompts), self.max_prompts),
            "points": (1, min(2, self.max_points), self.max_points),
        }


def compute_profiles(manifest: Manifest, limits: ProfileLimits) -> dict[str, dict[str, dict[str, list[int]]]]:
    """graph -> input name -> {"min", "opt", "max"} full shapes, from the manifest's input specs.

    Fixed (integer) axes in the manifest stay fixed; symbolic axes take their role's range. A symbolic axis
    with no known role is an error (the manifest and this builder disagree)."""
    ranges = limits.ranges(manifest.embed_grid)
    out: dict[str, dict[str, dict[str, list[int]]]] = {}
    for graph in GRAPHS:
        roles = AXIS_ROLES[graph]
        out[graph] = {}
        for spec in manifest.graphs[graph].inputs:
            name, shape = spec.name, spec.shape
            axis_roles = roles.get(name, {})
            dims: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
            for axis, dim in enumerate(shape):
                if isinstance(dim, int) and dim > 0:
                    lo = opt = hi = dim
                elif axis in axis_roles:
                    lo, opt, hi = ranges[axis_roles[axis]]
                else:
                    raise ValueError(
                        f"{graph}.{name}: axis {axis} ({dim!r}) is dynamic but has no profile role"
                    )
                dims["min"].append(lo)
                dims["opt"].append(opt)
                dims["max"].append(hi)
            out[graph][name] = dims
    return out


def keep_fp32(layer_type: str, elementwise_op: str | None = None) -> bool:
    """Whether a layer (TensorRT LayerType name, and ElementWiseOperation name for elementwise layers) is
    pinned to fp32 in an fp16 engine."""
    if layer_type in FP32_LAYER_TYPES:
        return True
    return layer_type == "ELEMENTWISE" and elementwise_op in FP32_ELEMENTWISE_OPS


def engine_record(
    graph: str,
    path: Path,
    *,
    cc: tuple[int, int],
    device_name: str,
    trt_version: str,
    precision: str,
    profiles: dict[str, dict[str, list[int]]],
    fp32_layers: int,
    outputs: list[str],
    build_s: float,
) -> EngineRecord:
    """The manifest.engines entry for one built engine file (see samclip_bundle/engines.py)."""
    return EngineRecord(
        graph=graph,
        file=path.name,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        compute_capability=cc,
        device_name=device_name,
        tensorrt=trt_version,
        precision=precision,
        profiles=profiles,
        fp32_layers=fp32_layers,
        outputs=outputs,
        build_s=round(build_s, 2),
        built_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


def update_manifest(bundle: Path, records: list[EngineRecord]) -> Manifest:
    """Add `records` to BUNDLE's manifest (replacing those for the same GPU/TensorRT/precision) and write it."""
    manifest = Manifest.read(bundle)
    upsert_engine_records(manifest, records)
    manifest.write(bundle)
    return manifest


# ----------------------------------------------------------------------------------------- TensorRT side
def _pin_fp32_layers(trt: Any, network: Any) -> int:
    """Pin normalisation/softmax/reduce/pow layers to fp32; returns how many were pinned."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        op = None
        if layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer  # python bindings return the base ILayer
            op = layer.op.name
        if not keep_fp32(layer.type.name, op):
            continue
        floats = [
            j for j in range(layer.num_outputs) if layer.get_output(j).dtype in (trt.float32, trt.float16)
        ]
        if not floats:
            continue
        layer.precision = trt.float32
        for j in floats:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _parse_onnx(trt: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any, Any]:
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    return builder, network, parser


def build_engine(
    trt: Any,
    onnx_path: Path,
    graph: str,
    profiles: dict[str, dict[str, list[int]]],
    precision: str,
    workspace_gb: float,
    timing_cache: Path,
) -> tuple[bytes, int, list[str]]:
    """Serialized engine bytes, number of fp32-pinned layers and the engine's output names."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = _parse_onnx(trt, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, False)  # ignore_mismatch=False
    pinned = 0
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32_layers(trt, network)
    profile = builder.create_optimization_profile()
    for name, dims in profiles.items():
        profile.set_shape(name, dims["min"], dims["opt"], dims["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {graph} ({precision}); see the log above")
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    return bytes(serialized), pinned, outputs


def build_bundle_engines(
    bundle: Path,
    precision: str,
    limits: ProfileLimits,
    workspace_gb: float = 4.0,
    device: int = 0,
    graphs: tuple[str, ...] = GRAPHS,
    timing_cache: Path | None = None,
    probe: GpuProbe | None = None,
) -> list[EngineRecord]:
    """Build one engine per graph on CUDA device `device`, write the files and update the manifest.
    probe: which GPUs the driver sees (samclip_bundle.cuda_probe; tests pass a fake driver)."""
    import tensorrt as trt  # noqa: PLC0415 - optional dependency, only this path needs it

    if not trt.__version__.startswith("10."):
        raise RuntimeError(
            f"build-trt targets TensorRT 10 (weakly-typed fp16 builds); this is TensorRT {trt.__version__}"
        )
    probe = probe or GpuProbe()
    dev = next((g for g in probe.gpus() if g.index == device), None)
    if dev is None:
        raise RuntimeError(f"CUDA device {device} is not visible: {probe.last_reason or 'no such device'}")
    manifest = Manifest.read(bundle)
    profiles = compute_profiles(manifest, limits)
    cache_path = (
        timing_cache or bundle / f"trt_timing.{sm_tag(dev.compute_capability)}.trt{trt.__version__}.cache"
    )
    records = []
    for graph in graphs:
        start = time.perf_counter()
        onnx_path = bundle / manifest.graphs[graph].file
        blob, pinned, outputs = build_engine(
            trt, onnx_path, graph, profiles[graph], precision, workspace_gb, cache_path
        )
        path = bundle / engine_filename(graph, dev.compute_capability, trt.__version__, precision)
        path.write_bytes(blob)
        records.append(
            engine_record(
                graph,
                path,
                cc=dev.compute_capability,
                device_name=dev.name,
                trt_version=trt.__version__,
                precision=precision,
                profiles=profiles[graph],
                fp32_layers=pinned,
                outputs=outputs,
                build_s=time.perf_counter() - start,
            )
        )
        print(f"built {path.name} in {records[-1].build_s} s ({pinned} layers kept fp32)", flush=True)
    update_manifest(bundle, records)
    return records


# ----------------------------------------------------------------------------------------- CLI
def add_build_trt_parser(subparsers: Any) -> None:
    """Register `build-trt` on the model_export argparse subparsers."""
    p = subparsers.add_parser("build-trt", help="build TensorRT 10 engines for the bundle's graphs")
    p.add_argument("bundle", type=Path)
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--max-batch", type=int, default=ProfileLimits.max_batch, help="encoder/CLIP-head batch")
    p.add_argument("--max-prompts", type=int, default=ProfileLimits.max_prompts, help="decoder prompts K")
    p.add_argument(
        "--max-points", type=int, default=ProfileLimits.max_points, help="decoder points per prompt"
    )
    p.add_argument("--max-text-batch", type=int, default=ProfileLimits.max_text_batch)
    p.add_argument("--min-grid", type=int, default=None, help="CLIP-head min token grid (default min(h, 28))")
    p.add_argument("--max-grid", type=int, default=None, help="CLIP-head max token grid (default h)")
    p.add_argument("--workspace-gb", type=float, default=4.0)
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--timing-cache", type=Path, default=None, help="reused and updated (default in BUNDLE)")
    p.set_defaults(func=cmd_build_trt)


def cmd_build_trt(args: Any) -> int:
    limits = ProfileLimits(
        args.max_batch, args.max_prompts, args.max_points, args.max_text_batch, args.min_grid, args.max_grid
    )
    try:
        import tensorrt  # noqa: F401, PLC0415
    except ImportError:
        print("build-trt needs TensorRT 10 (pip install 'samclip-serve[trt]') and an NVIDIA GPU", flush=True)
        return 2
    records = build_bundle_engines(
        args.bundle, args.precision, limits, args.workspace_gb, args.device, timing_cache=args.timing_cache
    )
    engines = [r.model_dump(mode="json") for r in records]
    print(json.dumps({"limits": asdict(limits), "engines": engines}, indent=2))
    return 0
