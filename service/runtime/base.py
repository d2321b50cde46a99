"""Backend protocol: the one small interface every inference runtime implements.

Routes and the pipeline only talk to a `Backend`; ONNX Runtime, OpenVINO, TensorRT and torch backends plug in
through the registry below and are imported lazily, so `service/` never needs torch unless the torch backend
is chosen.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class BackendError(RuntimeError):
    """A backend could not load or run a graph (bad artifact, mismatched engine, missing runtime)."""


@dataclass(frozen=True)
class EncoderOutput:
    """Outputs of one shared-encoder pass.

    image_embeddings: (B, C, h, w) float32, SAM image embedding (C = encoder.out_chans, h = w = S / 16).
    patch_tokens:     (B, h, w, W) float32, final encoder tokens consumed by the CLIP head (W = encoder width).
    """

    image_embeddings: np.ndarray
    patch_tokens: np.ndarray


@dataclass(frozen=True)
class ClipOutput:
    """CLIP-head outputs. image_embedding: (B, D) float32; patch_embeddings: (B, h, w, D) float32;
    both L2-normalised along the last axis."""

    image_embedding: np.ndarray
    patch_embeddings: np.ndarray


@dataclass(frozen=True)
class DecoderOutput:
    """SAM decoder outputs for K prompts. iou_predictions: (K, 4) float32; low_res_masks: (K, 4, 4h, 4w)
    float32 logits. Index 0 is SAM's single-mask output, 1..3 the multimask outputs."""

    iou_predictions: np.ndarray
    low_res_masks: np.ndarray


@dataclass
class BackendInfo:
    name: str
    device: str = "cpu"
    precision: str = "fp32"
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a runtime. All arrays are numpy, host memory, C-contiguous.

    Shapes follow model_export/BUNDLE.md. Implementations must return exactly as many rows as they were given
    (the batcher checks it) and may be called from worker threads, one call at a time per graph.
    """

    info: BackendInfo

    def encode(self, images: np.ndarray) -> EncoderOutput:
        """images: (B, 3, S, S) float32, normalised and padded (SAM preprocessing)."""
        ...

    def clip_head(self, patch_tokens: np.ndarray) -> ClipOutput:
        """patch_tokens: (B, h, w, W) float32."""
        ...

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids: (N, 77) int64 CLIP BPE ids -> (N, D) float32 L2-normalised."""
        ...

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> DecoderOutput:
        """image_embeddings (1, C, h, w); point_coords (K, N, 2) input-frame [x, y]; point_labels (K, N);
        mask_input (K, 1, 4h, 4w); has_mask_input (K,) — all float32."""
        ...


DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")


def decoder_feeds(
    image_embeddings: np.ndarray,
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    mask_input: np.ndarray,
    has_mask_input: np.ndarray,
    dtype: Any = None,
) -> dict[str, np.ndarray]:
    """`Backend.decode`'s arguments keyed by the decoder graph's input names (BUNDLE.md), in graph order.

    dtype None: the arrays as given (for runtimes that cast to each input's own dtype); otherwise each as a
    C-contiguous array of that dtype (`np.ascontiguousarray(a, dtype)`).
    """
    arrays = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
    if dtype is not None:
        arrays = tuple(np.ascontiguousarray(a, dtype) for a in arrays)
    return dict(zip(DECODER_INPUTS, arrays, strict=True))


class NamedGraphBackend:
    """`Backend` methods for runtimes whose graphs run as {input name: array} -> {output name: array}.

    Subclasses implement `_run_graph`; names and shapes are BUNDLE.md's (see `Backend`).
    """

    def _run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def encode(self, images: np.ndarray) -> EncoderOutput:
        out = self._run_graph("encoder", {"image": images})
        return EncoderOutput(out["image_embeddings"], out["patch_tokens"])

    def clip_head(self, patch_tokens: np.ndarray) -> ClipOutput:
        out = self._run_graph("clip_head", {"patch_tokens": patch_tokens})
        return ClipOutput(out["image_embedding"], out["patch_embeddings"])

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run_graph("text_encoder", {"input_ids": input_ids})["text_embedding"]

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> DecoderOutput:
        feeds = decoder_feeds(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        out = self._run_graph("sam_decoder", feeds)
        return DecoderOutput(out["iou_predictions"], out["low_res_masks"])


# name -> "module:factory". Factories take (bundle, settings) and return a Backend.
_REGISTRY: dict[str, str] = {
    "onnxruntime": "service.runtime.onnxruntime:OnnxRuntimeBackend",
    "openvino": "service.runtime.openvino:OpenVinoBackend",
    "onnxruntime-int8": "service.runtime.ort_int8:OnnxRuntimeInt8Backend",
    "tensorrt": "service.runtime.tensorrt:TensorRTBackend",
    "ort-cuda": "service.runtime.ort_cuda:OrtCudaBackend",
    "torch-cuda": "service.runtime.torch_cuda:TorchCudaBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register a backend factory as "package.module:Callable" (imported only when chosen)."""
    _REGISTRY[name] = target


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(name: str, bundle: Any, settings: Any) -> Backend:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(available_backends())}") from None
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise BackendError(f"backend {name!r} is not installed here: {exc}") from exc
    return factory(bundle, settings)
