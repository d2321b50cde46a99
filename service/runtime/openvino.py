"""OpenVINO CPU backend (`SAMCLIP_BACKEND=openvino`): bf16 on AMX/AVX512-BF16 CPUs, int8 variants when present.

Graphs are the bundle's ONNX files (model_export/BUNDLE.md) or a reduced-precision variant listed in
`manifest["variants"][graph]` (e.g. `encoder.int8.qdq.onnx`, written by `python -m model_export optimize`).
Each graph is compiled once for the CPU plugin with

- INFERENCE_PRECISION_HINT: per graph, from `openvino_graph_precision[graph]`, else `openvino_precision`
  ("auto" = bf16 where the CPU reports BF16 capability, else f32; "bf16", "f16" or "f32"),
- PERFORMANCE_HINT `openvino_hint` ("LATENCY" default: one stream using every usable CPU; "THROUGHPUT": several
  streams, encoder batches spread over parallel infer requests), NUM_STREAMS `openvino_num_streams` (0 = hint),
- INFERENCE_NUM_THREADS = `intra_op_threads`, 0 = CPUs this container may use (service.runtime.cpus: affinity
  mask and cgroup CPU quota),
- CACHE_DIR `openvino_cache_dir` (compiled-blob cache: faster restarts) when set.

Shapes: the encoder is reshaped to a static (1, 3, S, S) input and runs one image per infer request (a ViT-B at
1024 px is compute-bound, so batching buys nothing on a CPU while static shapes give the best kernels);
the CLIP head likewise at its (1, h, w, W) grid, with a dynamic-shape model compiled lazily for any other grid.
The text encoder (N) and SAM decoder (K prompts, N points) keep their dynamic axes. The decoder's full-size
`masks` output is pruned: the pipeline only uses `low_res_masks`.

Settings read (all optional, with the defaults above): backend-independent `intra_op_threads`, `variant`
("auto": use a manifest variant marked for openvino whose parity passed; "none": plain fp32 graphs; or a
variant name), and the `openvino_*` fields.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.base import (
    BackendError,
    BackendInfo,
    ClipOutput,
    DecoderOutput,
    EncoderOutput,
    decoder_feeds,
)
from service.runtime.cpus import resolve_threads
from service.runtime.variants import choose_variant

GRAPHS = ("encoder", "clip_head", "text_encoder", "sam_decoder")
_PRECISIONS = {"bf16", "f16", "f32"}
_DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")


def _setting(settings: Any, name: str, default: Any) -> Any:
    value = getattr(settings, name, None)
    return default if value is None else value


@dataclass(frozen=True)
class GraphPlan:
    """What file one graph is compiled from and at which precision. variant: manifest variant name or None."""

    graph: str
    path: Path
    precision: str
    variant: str | None


def _port_name(names: set[str], known: list[str]) -> str:
    """The manifest's name for an output port (ports may carry several tensor names)."""
    for name in known:
        if name in names:
            return name
    return sorted(names)[0]


class _Compiled:
    """One compiled graph with a pool of infer requests and a lock; outputs copied out of OpenVINO buffers."""

    def __init__(self, compiled: Any, requests: int, known: list[str]) -> None:
        self.compiled = compiled
        self.requests = [compiled.create_infer_request() for _ in range(max(1, requests))]
        self.lock = threading.Lock()
        self.output_names = [_port_name(o.get_names(), known) for o in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            result = self.requests[0].infer(feeds)
            return {
                name: np.array(result[port], copy=True)
                for name, port in zip(self.output_names, self.compiled.outputs, strict=False)
            }

    def run_items(self, name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch one item at a time (static batch-1 model), spreading items over the request pool."""
        with self.lock:
            outs: list[dict[str, np.ndarray]] = [{} for _ in range(len(batch))]
            for start in range(0, len(batch), len(self.requests)):
                chunk = range(start, min(start + len(self.requests), len(batch)))
                for req, i in zip(self.requests, chunk, strict=False):
                    req.start_async({name: np.ascontiguousarray(batch[i : i + 1])})
                for req, i in zip(self.requests, chunk, strict=False):
                    req.wait()
                    outs[i] = {
                        n: np.array(req.get_output_tensor(k).data, copy=True)
                        for k, n in enumerate(self.output_names)
                    }
            return {n: np.concatenate([o[n] for o in outs]) for n in self.output_names}


class OpenVinoBackend:
    """Backend protocol implementation on the OpenVINO CPU plugin (see module docstring for settings)."""

    def __init__(self, bundle: Any, settings: Any, metrics: Any = None) -> None:
        self.metrics = metrics  # optional service.metrics.Metrics: per-graph inference seconds
        try:
            import openvino as ov
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("the openvino backend needs the `fast` extra (pip install openvino)") from exc
        self._ov = ov
        self._core = ov.Core()
        self._bundle = bundle
        self._manifest: dict[str, Any] = bundle.manifest
        self._root = Path(bundle.path)
        self._threads = resolve_threads(_setting(settings, "intra_op_threads", 0))
        self._hint = str(_setting(settings, "openvino_hint", "LATENCY")).upper()
        self._streams = int(_setting(settings, "openvino_num_streams", 0))
        cache_dir = _setting(settings, "openvino_cache_dir", None)
        if cache_dir:
            self._core.set_property("CPU", {"CACHE_DIR": str(cache_dir)})
        self._plans = {g: self._plan(g, settings) for g in GRAPHS}
        self._graphs: dict[str, _Compiled] = {}
        self._dynamic_clip: _Compiled | None = None
        try:
            for graph in GRAPHS:
                self._graphs[graph] = self._compile(graph)
        except BackendError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long messages
            raise BackendError(f"openvino could not compile the bundle graphs: {exc}") from exc
        self.info = BackendInfo(
            name="openvino",
            device="cpu",
            precision=self._actual_precision("encoder"),
            details={
                "openvino": ov.__version__,
                "threads": self._threads,
                "hint": self._hint,
                "streams": self._graphs["encoder"].compiled.get_property("NUM_STREAMS"),
                "graphs": {
                    g: {
                        "file": p.path.name,
                        "variant": p.variant,
                        "precision": self._actual_precision(g),
                    }
                    for g, p in self._plans.items()
                },
            },
        )

    # ---- planning and compilation ------------------------------------------------------------------------
    def _default_precision(self) -> str:
        caps = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return "bf16" if "BF16" in caps else "f32"

    def _plan(self, graph: str, settings: Any) -> GraphPlan:
        per_graph = dict(_setting(settings, "openvino_graph_precision", {}) or {})
        precision = str(per_graph.get(graph, _setting(settings, "openvino_precision", "auto"))).lower()
        if precision == "auto":
            precision = self._default_precision()
        if precision not in _PRECISIONS:
            raise BackendError(
                f"openvino precision {precision!r} for {graph}: expected auto, bf16, f16 or f32"
            )
        wanted = str(_setting(settings, "variant", "auto"))
        entry = choose_variant(self._manifest, graph, wanted, "openvino")
        if entry is None and wanted not in ("auto", "none") and graph == "encoder":
            raise BackendError(f"variant {wanted!r} not found for the encoder in {self._root}/manifest.json")
        file_name = entry["file"] if entry else self._manifest["graphs"][graph]["file"]
        path = self._root / file_name
        if not path.is_file():
            raise BackendError(f"{graph}: {path} is missing")
        return GraphPlan(graph, path, precision, entry.get("name") if entry else None)

    def _config(self, precision: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": self._hint,
            "INFERENCE_NUM_THREADS": self._threads,
        }
        if self._streams > 0:
            config["NUM_STREAMS"] = self._streams
        return config

    def _static_shape(self, graph: str) -> list[int] | None:
        s, grid = int(self._bundle.image_size), int(self._bundle.embed_grid)
        width = self._bundle.clip_width
        return {"encoder": [1, 3, s, s], "clip_head": [1, grid, grid, width]}.get(graph)

    def _compile(self, graph: str, *, static: bool = True) -> _Compiled:
        plan = self._plans[graph]
        model = self._core.read_model(str(plan.path))
        shape = self._static_shape(graph) if static else None
        if shape is not None:
            model.reshape({model.inputs[0].get_any_name(): shape})
        if graph == "sam_decoder":
            for result in list(model.get_results()):
                if not set(result.output(0).get_names()) & set(_DECODER_OUTPUTS):
                    model.remove_result(result)
            model.validate_nodes_and_infer_types()
        compiled = self._core.compile_model(model, "CPU", self._config(plan.precision))
        requests = 1
        if shape is not None:
            requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        known = [o["name"] for o in self._manifest["graphs"][graph].get("outputs", [])]
        return _Compiled(compiled, requests, known)

    def _actual_precision(self, graph: str) -> str:
        value = self._graphs[graph].compiled.get_property("INFERENCE_PRECISION_HINT")
        name = value.get_type_name() if hasattr(value, "get_type_name") else str(value).lower()
        variant = self._plans[graph].variant
        return f"{variant}+{name}" if variant else name

    def _observe(self, graph: str, start: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_graph(graph, time.perf_counter() - start)

    # ---- Backend protocol --------------------------------------------------------------------------------
    def encode(self, images: np.ndarray) -> EncoderOutput:
        """images (B, 3, S, S) float32 -> image_embeddings (B, C, h, w), patch_tokens (B, h, w, W)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        start = time.perf_counter()
        out = self._graphs["encoder"].run_items("image", images)
        self._observe("encoder", start)
        return EncoderOutput(image_embeddings=out["image_embeddings"], patch_tokens=out["patch_tokens"])

    def clip_head(self, patch_tokens: np.ndarray) -> ClipOutput:
        """patch_tokens (B, h, w, W) float32 -> (B, D), (B, h, w, D), L2-normalised."""
        tokens = np.ascontiguousarray(patch_tokens, dtype=np.float32)
        start = time.perf_counter()
        if list(tokens.shape[1:]) == self._static_shape("clip_head")[1:]:
            out = self._graphs["clip_head"].run_items("patch_tokens", tokens)
        else:
            if self._dynamic_clip is None:
                self._dynamic_clip = self._compile("clip_head", static=False)
            out = self._dynamic_clip.run({"patch_tokens": tokens})
        self._observe("clip_head", start)
        return ClipOutput(image_embedding=out["image_embedding"], patch_embeddings=out["patch_embeddings"])

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids (N, 77) int64 -> (N, D) float32 L2-normalised."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        start = time.perf_counter()
        out = self._graphs["text_encoder"].run({"input_ids": ids})["text_embedding"]
        self._observe("text_encoder", start)
        return out

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> DecoderOutput:
        """Shapes as in base.Backend.decode; returns iou_predictions (K, 4), low_res_masks (K, 4, 4h, 4w)."""
        feeds = decoder_feeds(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input, np.float32
        )
        start = time.perf_counter()
        out = self._graphs["sam_decoder"].run(feeds)
        self._observe("sam_decoder", start)
        return DecoderOutput(iou_predictions=out["iou_predictions"], low_res_masks=out["low_res_masks"])
