"""OpenVINO CPU backend (`SAMCLIP_BACKEND=openvino`): bf16 on AMX/AVX512-BF16 CPUs, int8 variants when present.

Graphs are the bundle's ONNX files or the reduced-precision variant chosen from `manifest.variants` (runtime
label "openvino", e.g. `encoder.int8.qdq.onnx` written by `python -m model_export optimize`; setting `variant`:
"auto" = the passing one with the lowest rank, "none", or a name). Each graph is compiled once for the CPU
plugin with

- INFERENCE_PRECISION_HINT: per graph, from `openvino_graph_precision[graph]`, else `openvino_precision`
  ("auto" = bf16 where the CPU reports BF16 capability, else f32; "bf16", "f16" or "f32"),
- PERFORMANCE_HINT `openvino_hint` ("LATENCY" default: one stream using every usable CPU; "THROUGHPUT": several
  streams, encoder batches spread over parallel infer requests), NUM_STREAMS `openvino_num_streams` (0 = hint),
- INFERENCE_NUM_THREADS = `intra_op_threads`, 0 = `cpus`, 0 = CPUs this container may use (runtime/cpus.py),
- CACHE_DIR `openvino_cache_dir` (compiled-blob cache: faster restarts) when set.

Inputs that come from a cached image (the decoder's image_embeddings, the CLIP head's patch_tokens) take the
cache's dtype at the port (`cache_dtype` float16: an f16 input, converted inside the compiled graph, instead of
a float16 -> float32 copy in OpenVINO's Python layer per call: ~1.3 ms of a ~9 ms ViT-B decoder call here), and
every call shares its input arrays with the infer request and reads its outputs from the request's buffers
(`share_inputs` / `share_outputs`), copying each output once. The decoder's models take the embedding
channels-last, as an entry holds it (runtime/openvino_decoder.py `channels_last_input`: the fused decoder reads
it as its rows with no transpose).

Shapes: the encoder is reshaped to a static (1, 3, S, S) input and runs one image per infer request from a pool
(a ViT-B at 1024 px is compute-bound, so batching buys nothing on a CPU while static shapes give the best
kernels); the CLIP head likewise at its (1, h, w, W) grid, with a dynamic-shape model compiled lazily for any
other grid. The text encoder (N) and SAM decoder (K prompts, N points) keep their dynamic axes; calls of the
decoder without mask prompts run static box/point-only specialisations (runtime/openvino_decoder.py; setting
`openvino_decoder_shapes`: how many are kept, 0 = off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from samclip_bundle.graphs import GRAPH_INPUTS, GRAPH_OUTPUTS
from service.runtime.base import BackendError, GraphBackend, inference_threads, setting
from service.runtime.openvino_decoder import DecoderModels, channels_last_input, without_mask_prompts

_PRECISIONS = {"bf16", "f16", "f32"}
_STATIC_GRAPHS = ("encoder", "clip_head")
CACHED_INPUTS = {"sam_decoder": "image_embeddings", "clip_head": "patch_tokens"}  # arrays of a cache entry
VARIANT_CONFIG: dict[tuple[str, str | None], dict[str, str]] = {
    ("sam_decoder", "fused"): {"SNIPPETS_MODE": "DISABLE"}
}
"""Compile properties per (graph, variant it runs), over the common ones. The fused decoder runs without the CPU
plugin's snippets: they capture its token -> image attention (MatMul, Softmax, MatMul over the image tokens as
rows) as one MHA subgraph on non-AMX kernels, 1.2-1.6 ms per attention instead of ~0.2 ms as separate AMX GEMMs
(ViT-B, 1 box, 2-core Sapphire Rapids: 7.2 ms per call without them against 10.1 ms with them). The plain decoder
keeps them (14.0 ms without, 11.7 ms with)."""


def _port_name(names: set[str], known: tuple[str, ...]) -> str:
    """The contract's name for an output port (ports may carry several tensor names)."""
    return next((n for n in known if n in names), sorted(names)[0])


class _Compiled:
    """One compiled graph with a pool of infer requests; outputs copied out of OpenVINO's buffers."""

    def __init__(self, compiled: Any, requests: int, graph: str) -> None:
        self.compiled = compiled
        self.requests = [compiled.create_infer_request() for _ in range(max(1, requests))]
        self.output_names = [_port_name(o.get_names(), GRAPH_OUTPUTS[graph]) for o in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.requests[0].infer(feeds, share_inputs=True, share_outputs=True)
        ports = zip(self.output_names, self.compiled.outputs, strict=False)
        return {name: np.array(result[port], copy=True) for name, port in ports}

    def run_items(self, name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch one item at a time (static batch-1 model), spreading items over the request pool."""
        outs: list[dict[str, np.ndarray]] = [{} for _ in range(len(batch))]
        for start in range(0, len(batch), len(self.requests)):
            chunk = range(start, min(start + len(self.requests), len(batch)))
            for req, i in zip(self.requests, chunk, strict=False):
                req.start_async({name: np.ascontiguousarray(batch[i : i + 1])}, share_inputs=True)
            for req, i in zip(self.requests, chunk, strict=False):
                req.wait()
                outs[i] = {
                    n: np.array(req.get_output_tensor(k).data, copy=True)
                    for k, n in enumerate(self.output_names)
                }
        return {n: np.concatenate([o[n] for o in outs]) for n in self.output_names}


class OpenVinoBackend(GraphBackend):
    """Backend protocol on the OpenVINO CPU plugin (see module docstring for settings)."""

    name = "openvino"
    devices = ("cpu",)
    runtime = "openvino"

    def prepare(self) -> None:
        try:
            import openvino as ov
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("the openvino backend needs the `fast` extra (pip install openvino)") from exc
        self.ov, self.core = ov, ov.Core()
        self.threads = inference_threads(self.settings)
        self.hint = str(setting(self.settings, "openvino_hint", "LATENCY")).upper()
        self.streams = int(setting(self.settings, "openvino_num_streams", 0))
        self.cache_dtype = np.dtype(str(setting(self.settings, "cache_dtype", "float16")))  # Settings default
        if cache_dir := setting(self.settings, "openvino_cache_dir", None):
            self.core.set_property("CPU", {"CACHE_DIR": str(cache_dir)})
        per_graph = dict(setting(self.settings, "openvino_graph_precision", {}))
        default = str(setting(self.settings, "openvino_precision", "auto")).lower()
        self.precisions = {
            g: self._precision(g, str(per_graph.get(g, default)).lower()) for g in GRAPH_INPUTS
        }
        self.dynamic_clip: _Compiled | None = None

    def _precision(self, graph: str, wanted: str) -> str:
        if wanted == "auto":
            return "bf16" if "BF16" in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
        if wanted not in _PRECISIONS:
            raise BackendError(f"openvino precision {wanted!r} for {graph}: expected auto, bf16, f16 or f32")
        return wanted

    def _static_shape(self, graph: str) -> list[int] | None:
        s, grid, width = int(self.bundle.image_size), int(self.bundle.embed_grid), self.bundle.clip_width
        return {"encoder": [1, 3, s, s], "clip_head": [1, grid, grid, width]}.get(graph)

    def load_graph(self, graph: str, source: Path, *, static: bool = True) -> Any:
        model = self.core.read_model(str(source))
        rows = graph == "sam_decoder" and channels_last_input(model)  # the embedding channels-last
        shape = self._static_shape(graph) if static else None
        if shape is not None:
            model.reshape({model.inputs[0].get_any_name(): shape})
        compiled = self._compile(model, graph)
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if shape else 1
        if graph == "sam_decoder":  # + static box/point-only specialisations (runtime/openvino_decoder.py)
            return self._decoder_models(_Compiled(compiled, 1, graph), source, rows)
        return _Compiled(compiled, requests, graph)

    def _compile(self, model: Any, graph: str) -> Any:
        if graph in CACHED_INPUTS and self.cache_dtype == np.float16:
            steps = self.ov.preprocess.PrePostProcessor(model)
            steps.input(CACHED_INPUTS[graph]).tensor().set_element_type(self.ov.Type.f16)
            model = steps.build()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.precisions[graph],
            "PERFORMANCE_HINT": self.hint,
            "INFERENCE_NUM_THREADS": self.threads,
        }
        if self.streams > 0:
            config["NUM_STREAMS"] = self.streams
        entry = self.variant.entries.get(graph)
        config.update(VARIANT_CONFIG.get((graph, entry.name if entry is not None else None), {}))
        return self.core.compile_model(model, "CPU", config)

    def _decoder_models(self, dynamic: _Compiled, source: Path, rows: bool) -> DecoderModels:
        grid = 4 * int(self.bundle.embed_grid)

        def specialise(shapes: dict[str, list[int]]) -> _Compiled:
            model = without_mask_prompts(self.core.read_model(str(source)), grid)
            model.reshape(shapes)
            channels_last_input(model)
            return _Compiled(self._compile(model, "sam_decoder"), 1, "sam_decoder")

        shapes = int(setting(self.settings, "openvino_decoder_shapes", 8))
        models = DecoderModels(dynamic, specialise, shapes, rows)
        chans = int(self.bundle.manifest.model.config["encoder"]["out_chans"])
        models.warm((1, chans, grid // 4, grid // 4))
        return models

    def feed(self, name: str, array: np.ndarray) -> np.ndarray:
        if name == "image_embeddings":  # in its memory order: DecoderModels lays it out for its models
            return array.astype(self.cache_dtype, copy=False)
        if name in CACHED_INPUTS.values():  # a cache entry's array as is (the port has its dtype)
            return np.ascontiguousarray(array, dtype=self.cache_dtype)
        return super().feed(name, array)

    def close_graph(self, session: Any) -> None:
        if isinstance(session, DecoderModels):
            session.close()

    def run_graph(self, graph: str, session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph not in _STATIC_GRAPHS:
            return session.run(feeds)
        (name,) = GRAPH_INPUTS[graph]
        if list(feeds[name].shape[1:]) == self._static_shape(graph)[1:]:
            return session.run_items(name, feeds[name])
        if self.dynamic_clip is None:  # another CLIP-head grid: one dynamic-shape model, compiled once
            self.dynamic_clip = self.load_graph(graph, self.graph_source(graph), static=False)
        return self.dynamic_clip.run(feeds)

    @property
    def encoder_batch_limit(self) -> int:
        """Most images worth batching into one encoder call: the static batch-1 encoder runs a batch item by item
        over its infer-request pool (1 under the LATENCY hint), so a larger batch only makes the first image
        wait for the batcher (`max_batch_wait_ms`) and gains nothing. The image store caps its batches here."""
        return len(self.sessions["encoder"].requests)

    def _actual_precision(self, graph: str) -> str:
        value = self.sessions[graph].compiled.get_property("INFERENCE_PRECISION_HINT")
        name = value.get_type_name() if hasattr(value, "get_type_name") else str(value).lower()
        entry = self.variant.entries.get(graph)
        return f"{entry.name}+{name}" if entry else name

    def graph_label(self, graph: str) -> dict[str, Any]:
        entry = self.variant.entries.get(graph)
        source = self.graph_source(graph).name
        return {
            "file": source,
            "variant": entry.name if entry else None,
            "precision": self._actual_precision(graph),
        }

    def describe(self) -> tuple[str, str, dict[str, Any]]:
        details = {
            "openvino": self.ov.__version__,
            "threads": self.threads,
            "hint": self.hint,
            "streams": self.sessions["encoder"].compiled.get_property("NUM_STREAMS"),
            "encoder_batch_limit": self.encoder_batch_limit,
        }
        return "cpu", self._actual_precision("encoder"), details
