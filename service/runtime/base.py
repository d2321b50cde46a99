"""The one backend shape: a base class that owns the graph sessions, and the four `Backend` methods.

Routes and the pipeline only talk to a `Backend` (encode / clip_head / encode_text / decode, `info`, `close`).
`GraphBackend` implements them once: it picks the variant from the typed manifest (samclip_bundle.variants),
loads the four graphs through its subclass, serialises calls per graph (one lock each: callers may use any
thread), times every call into `metrics.observe_graph(graph, seconds)` (the samclip_inference_seconds{graph}
histogram) and releases everything in `close()`. A runtime subclass (service/runtime/onnxruntime.py,
openvino.py, tensorrt.py, torch_backend.py) only says how to load one graph and how to run one graph.
Backends are created by name through service/runtime/registry.py (`create_backend`), imported lazily so that
`service/` never needs torch unless the torch backend is chosen.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from samclip_bundle.graphs import GRAPH_INPUTS, GRAPH_OUTPUTS, GRAPHS, input_dtype
from samclip_bundle.variants import VariantChoice, VariantError, choose_variant
from service.runtime.decoder import decoder_choice, without_decoder_variants
from service.runtime.layout import to_channels_first

# `python -m model_export optimize --target T` writes the variants a runtime label runs.
OPTIMIZE_TARGETS = {"onnxruntime": "ort-int8", "openvino": "openvino-int8"}


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
    """name: canonical backend name; device: "cpu", "cuda:0"...; precision: e.g. "fp32", "int8", "bf16";
    details: runtime specifics, incl. "selection" (requested name, backend, variant and why)."""

    name: str
    device: str = "cpu"
    precision: str = "fp32"
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a runtime. All arrays are numpy, host memory, C-contiguous; shapes follow
    model_export/BUNDLE.md. Implementations return exactly as many rows as they were given and may be called
    from any thread."""

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

    def close(self) -> None:
        """Release sessions and device memory; the backend cannot run afterwards."""
        ...


def setting(settings: Any, name: str, default: Any) -> Any:
    """settings.name, or `default` when the attribute is missing or None (settings may be any namespace)."""
    value = getattr(settings, name, None)
    return default if value is None else value


def inference_threads(settings: Any) -> int:
    """Threads for one inference pool: `intra_op_threads` when > 0, else `cpus` when > 0 (SAMCLIP_CPUS, the
    chart sets it from the pod's CPU request), else the CPUs this process may use (runtime/cpus.py)."""
    from service.runtime.cpus import resolve_threads

    return resolve_threads(int(setting(settings, "intra_op_threads", 0)) or int(setting(settings, "cpus", 0)))


class GraphBackend:
    """Base of every runtime (see module docstring). Subclasses set `name`, `devices` and implement
    `load_graph` and `run_graph`; optional hooks: `prepare`, `graph_source`, `close_graph`, `describe`."""

    name: ClassVar[str] = "base"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # where this runtime can run ("cpu", "cuda")
    runtime = "base"  # variant runtime label (manifest variants' `runtimes`); None-like "" = no variants

    def __init__(self, bundle: Any, settings: Any, metrics: Any = None) -> None:
        self.bundle, self.settings, self.metrics = bundle, settings, metrics
        self.locks = {g: threading.Lock() for g in GRAPHS}
        self.sessions: dict[str, Any] = {}
        self._closed = False
        self.check_device(str(setting(settings, "device", "auto")))
        self.prepare()
        self.variant = self.choose_variant()
        self._load_all()
        device, precision, details = self.describe()
        graphs = {g: self.graph_label(g) for g in GRAPHS}
        details = {
            **details,
            "variant": self.variant.name,
            "variant_reason": self.variant.reason,
            "graphs": graphs,
        }
        self.info = BackendInfo(self.name, device, precision, details)

    # ---- hooks for runtimes ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Runtime set-up before the graphs load (import the runtime, pick devices / engines)."""

    def graph_source(self, graph: str) -> Path:
        """What `load_graph` loads for `graph`: the chosen variant's file, else the plain graph."""
        return Path(self.bundle.path) / self.variant.file(self.bundle.manifest, graph)

    def graph_label(self, graph: str) -> Any:
        """How /info describes one loaded graph (default: its file name)."""
        return self.graph_source(graph).name

    def load_graph(self, graph: str, source: Path) -> Any:
        """Load one graph; the returned session is passed back to run_graph / close_graph."""
        raise NotImplementedError

    def run_graph(self, graph: str, session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph: feeds and result keyed by the contract's names (samclip_bundle.graphs)."""
        raise NotImplementedError

    def feed(self, name: str, array: np.ndarray) -> np.ndarray:
        """One input as the runtime takes it: C-contiguous, in the contract's dtype (runtimes that convert
        float16 themselves may keep it: a float16 cache entry is then not cast on every call). The image embedding
        may come held channels-last (a cache entry's layout): it is copied channels-first (runtime/layout.py)."""
        if name == "image_embeddings":
            return to_channels_first(array, input_dtype(name))
        return np.ascontiguousarray(array, dtype=input_dtype(name))

    def close_graph(self, session: Any) -> None:
        """Free one session's resources."""

    def describe(self) -> tuple[str, str, dict[str, Any]]:
        """(device, precision, details) for `info`."""
        precisions = {e.precision for e in self.variant.entries.values()}
        return "cpu", "+".join(sorted(precisions)) or "fp32", {}

    def choose_variant(self) -> VariantChoice:
        """The manifest variant to run (setting `variant`; BackendError when a named one is missing, or when
        `require_variant` is set and the bundle has none for this runtime), with the SAM decoder's graph
        chosen on its own by setting `decoder_variant` (service/runtime/decoder.py)."""
        wanted = str(setting(self.settings, "variant", "auto"))
        try:
            choice = choose_variant(without_decoder_variants(self.bundle.manifest), self.runtime, wanted)
        except VariantError as exc:
            raise BackendError(f"{self.name}: {exc}") from None
        if choice.name is None and setting(self.settings, "require_variant", False):
            target = OPTIMIZE_TARGETS.get(self.runtime, "...")
            raise BackendError(
                f"bundle {self.bundle.path} has no {self.runtime} variant ({choice.reason}); write one with "
                f"`python -m model_export optimize {self.bundle.path} --target {target}`"
            )
        wanted = str(setting(self.settings, "decoder_variant", "auto"))
        try:
            return decoder_choice(choice, self.bundle.manifest, self.runtime, wanted)
        except VariantError as exc:
            raise BackendError(f"{self.name}: decoder_variant: {exc}") from None

    def check_device(self, wanted: str) -> None:
        """BackendError when setting `device` ("auto" | "cpu" | "cuda") asks for a device this runtime lacks."""
        if wanted not in ("auto", "cpu", "cuda"):
            raise BackendError(f"device {wanted!r}: expected auto, cpu or cuda (SAMCLIP_DEVICE)")
        if wanted != "auto" and wanted not in self.devices:
            raise BackendError(
                f"SAMCLIP_DEVICE={wanted} but the {self.name} backend runs on {' or '.join(self.devices)}; "
                "choose another backend (SAMCLIP_BACKEND) or device"
            )

    # ---- the shared machinery -------------------------------------------------------------------------------
    def _load_all(self) -> None:
        graph = ""
        try:
            for graph in GRAPHS:
                self.sessions[graph] = self.load_graph(graph, self.graph_source(graph))
        except BackendError:
            self.close()
            raise
        except Exception as exc:  # runtimes raise their own types with long messages
            self.close()
            raise BackendError(f"{self.name} cannot load {graph}: {type(exc).__name__}: {exc}") from exc

    def run(self, graph: str, *arrays: np.ndarray) -> dict[str, np.ndarray]:
        """Run `graph` on its inputs in contract order (cast to the contract dtypes), under its lock, timed."""
        names = GRAPH_INPUTS[graph]
        feeds = {n: self.feed(n, a) for n, a in zip(names, arrays, strict=True)}
        with self.locks[graph]:
            if self._closed:
                raise BackendError(f"{self.name} backend is closed")
            start = time.perf_counter()
            out = self.run_graph(graph, self.sessions[graph], feeds)
            seconds = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.observe_graph(graph, seconds)
        return out

    def _outputs(self, graph: str, *arrays: np.ndarray) -> list[np.ndarray]:
        out = self.run(graph, *arrays)
        return [out[name] for name in GRAPH_OUTPUTS[graph]]

    def encode(self, images: np.ndarray) -> EncoderOutput:
        return EncoderOutput(*self._outputs("encoder", images))

    def clip_head(self, patch_tokens: np.ndarray) -> ClipOutput:
        return ClipOutput(*self._outputs("clip_head", patch_tokens))

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self._outputs("text_encoder", input_ids)[0]

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> DecoderOutput:
        arrays = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        return DecoderOutput(*self._outputs("sam_decoder", *arrays))

    def close(self) -> None:
        """Free every session (idempotent); later calls raise BackendError."""
        for graph in GRAPHS:
            with self.locks[graph]:
                session = self.sessions.pop(graph, None)
                if session is not None:
                    self.close_graph(session)
        self._closed = True
        self.after_close()

    def after_close(self) -> None:
        """Runtime-wide clean-up after every graph is closed (e.g. a CUDA context)."""
