"""ONNX Runtime backend: one InferenceSession per bundle graph.

- Providers come from settings.providers (CPUExecutionProvider by default; CUDA / TensorRT execution providers
  where this onnxruntime build has them). Requested providers that are not available are dropped with a
  warning; CPU is always the last fallback.
- Session options: intra_op_num_threads = settings.intra_op_threads (0 = auto: number of CPUs this process may
  run on, os.sched_getaffinity), inter_op_num_threads = settings.inter_op_threads, graph optimisation ALL.
- The decoder's `masks` output (K, 4, S, S) is pruned from the graph before the session is created (the ONNX
  proto is loaded, the output and every node only it needs are removed), so ORT never computes it: the
  service upsamples low_res_masks itself, straight to the original size.
- Per-graph wall time goes to metrics.observe_graph(graph, seconds) when a metrics object is supplied.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from service.runtime.base import (
    BackendError,
    BackendInfo,
    ClipOutput,
    DecoderOutput,
    EncoderOutput,
    decoder_feeds,
)
from service.runtime.cpus import available_cpus

log = logging.getLogger(__name__)

DECODER_KEEP = ("iou_predictions", "low_res_masks")


def auto_threads() -> int:
    """CPUs this process may use: the affinity mask capped by the cgroup CPU quota (see runtime/cpus.py)."""
    return available_cpus()


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for graph in graphs:
            for sub in graph.node:
                names.update(sub.input)
                names |= _subgraph_inputs(sub)
    return names


def prune_outputs(model: onnx.ModelProto, keep: tuple[str, ...]) -> onnx.ModelProto:
    """Keep only the graph outputs named in `keep`, drop nodes and initializers nothing needs any more."""
    graph = model.graph
    kept_outputs = [o for o in graph.output if o.name in keep]
    missing = set(keep) - {o.name for o in kept_outputs}
    if missing:
        raise BackendError(f"graph has no output(s) {sorted(missing)}")
    del graph.output[:]
    graph.output.extend(kept_outputs)
    needed = set(keep)
    kept_nodes = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept_nodes.append(node)
            needed.update(node.input)
            needed |= _subgraph_inputs(node)
    kept_nodes.reverse()
    del graph.node[:]
    graph.node.extend(kept_nodes)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return model


def select_providers(requested: list[str]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    dropped = [p for p in requested if p not in available]
    if dropped:
        log.warning("execution providers not available in this onnxruntime build, ignored: %s", dropped)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(settings: Any) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    intra = int(getattr(settings, "intra_op_threads", 0) or 0)
    opts.intra_op_num_threads = intra if intra > 0 else auto_threads()
    opts.inter_op_num_threads = max(1, int(getattr(settings, "inter_op_threads", 1) or 1))
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class OnnxRuntimeBackend:
    """Backend protocol (service/runtime/base.py) on ONNX Runtime. Arrays in and out: numpy, host memory."""

    def __init__(self, bundle: Any, settings: Any, metrics: Any = None) -> None:
        self.metrics = metrics
        self.providers = select_providers(list(getattr(settings, "providers", ["CPUExecutionProvider"])))
        self._opts = session_options(settings)
        self.sessions: dict[str, ort.InferenceSession] = {}
        for name in ("encoder", "clip_head", "text_encoder"):
            self.sessions[name] = self._session(str(bundle.graph_path(name)), name)
        try:
            decoder = onnx.load(str(bundle.graph_path("sam_decoder")))
            decoder_bytes = prune_outputs(decoder, DECODER_KEEP).SerializeToString()
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot load sam_decoder.onnx: {type(exc).__name__}: {exc}") from exc
        self.sessions["sam_decoder"] = self._session(decoder_bytes, "sam_decoder")
        used = self.sessions["encoder"].get_providers()
        device = (
            "cuda"
            if any(p in used for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
            else "cpu"
        )
        self.info = BackendInfo(
            name="onnxruntime",
            device=device,
            precision="fp32",
            details={
                "providers": used,
                "onnxruntime": ort.__version__,
                "intra_op_threads": self._opts.intra_op_num_threads,
                "inter_op_threads": self._opts.inter_op_num_threads,
            },
        )

    def _session(self, model: str | bytes, name: str) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(model, sess_options=self._opts, providers=self.providers)
        except Exception as exc:
            raise BackendError(f"onnxruntime cannot load {name}: {type(exc).__name__}: {exc}") from exc

    def _run(self, graph: str, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        start = time.perf_counter()
        result = self.sessions[graph].run(outputs, feeds)
        if self.metrics is not None:
            self.metrics.observe_graph(graph, time.perf_counter() - start)
        return result

    def encode(self, images: np.ndarray) -> EncoderOutput:
        emb, tokens = self._run(
            "encoder",
            ["image_embeddings", "patch_tokens"],
            {"image": np.ascontiguousarray(images, np.float32)},
        )
        return EncoderOutput(image_embeddings=emb, patch_tokens=tokens)

    def clip_head(self, patch_tokens: np.ndarray) -> ClipOutput:
        img, dense = self._run(
            "clip_head",
            ["image_embedding", "patch_embeddings"],
            {"patch_tokens": np.ascontiguousarray(patch_tokens, np.float32)},
        )
        return ClipOutput(image_embedding=img, patch_embeddings=dense)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        (emb,) = self._run(
            "text_encoder", ["text_embedding"], {"input_ids": np.ascontiguousarray(input_ids, np.int64)}
        )
        return emb

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> DecoderOutput:
        feeds = decoder_feeds(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input, np.float32
        )
        iou, low = self._run("sam_decoder", list(DECODER_KEEP), feeds)
        return DecoderOutput(iou_predictions=iou, low_res_masks=low)
