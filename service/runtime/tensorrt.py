"""Native TensorRT backend (`SAMCLIP_BACKEND=tensorrt`): the engines `python -m model_export build-trt` wrote.

Load: pick one engine record per graph from `manifest.engines` (samclip_bundle.engines) for the wanted precision
(`settings.precision`: "fp16" default, or "fp32") that matches THIS GPU's compute capability and THIS TensorRT
version exactly; anything else is refused with a BackendError naming the file, what it was built for and the
rebuild command (the app then stays live but never ready). Each file's sha256 is checked before it is
deserialized.

Run: one execution context, one non-blocking CUDA stream, and one set of device + pinned host buffers per
graph, sized once for the profile's max shapes (no allocation per call); the base class's lock per graph
serialises calls, so each graph behaves as one worker with its own stream. CUDA's current device is per thread,
so every call first makes `cuda_device` current on the calling thread (`CudaRuntime.make_current`, once per
thread), whichever thread runs it (loader, batcher, request pool). A call copies inputs into pinned memory, H2D async,
`set_input_shape` for every input, `set_tensor_address` for every tensor, `execute_async_v3`, D2H async, one
stream sync. Batches larger than the profile's max (encoder/CLIP-head B, text N, decoder K) run in chunks.
Device memory and streams come from cuda-python (service/runtime/cuda_rt.py), never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from samclip_bundle.engines import EngineMismatch, select_engines
from samclip_bundle.hashing import sha256_file
from samclip_bundle.variants import VariantChoice
from service.runtime.base import BackendError, GraphBackend, setting
from service.runtime.cuda_rt import CudaRuntime, PinnedBuffer

# inputs whose axis 0 is the chunkable batch axis, per graph
_BATCHED_INPUTS = {
    "encoder": ("image",),
    "clip_head": ("patch_tokens",),
    "text_encoder": ("input_ids",),
    "sam_decoder": ("point_coords", "point_labels", "mask_input", "has_mask_input"),
}


class TrtGraph:
    """One deserialized engine with its context, stream and max-size buffers. Not thread-safe by itself (the
    backend's per-graph lock serialises it); the caller makes the CUDA device current on its thread first."""

    def __init__(self, trt: Any, runtime: Any, cuda: CudaRuntime, path: Path, name: str) -> None:
        self.name, self.trt, self.cuda = name, trt, cuda
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {path.name} (corrupt or incompatible engine)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.stream_create()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.max_shapes = self._max_shapes()
        self.device: dict[str, int] = {}
        self.host: dict[str, PinnedBuffer] = {}
        for n, shape in self.max_shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtypes[n].itemsize
            self.device[n] = cuda.malloc(nbytes)
            self.host[n] = PinnedBuffer(cuda, nbytes)
            self.context.set_tensor_address(n, self.device[n])

    def _max_shapes(self) -> dict[str, tuple[int, ...]]:
        """Profile-0 max shape of every input; output shapes inferred by the context at those inputs."""
        shapes = {}
        for n in self.inputs:
            _lo, _opt, hi = self.engine.get_tensor_profile_shape(n, 0)
            shapes[n] = tuple(int(d) for d in hi)
            self.context.set_input_shape(n, shapes[n])
        for n in self.outputs:
            shapes[n] = tuple(int(d) for d in self.context.get_tensor_shape(n))
            if any(d < 0 for d in shapes[n]):
                raise BackendError(f"{self.name}: output {n} has a data-dependent shape {shapes[n]}")
        return shapes

    @property
    def max_batch(self) -> int:
        return min(self.max_shapes[n][0] for n in _BATCHED_INPUTS[self.name] if n in self.max_shapes)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: input name -> host array (any float/int dtype, cast to the engine's). Returns float32 copies."""
        for n in self.inputs:
            arr = np.ascontiguousarray(feeds[n], dtype=self.dtypes[n])
            hi = self.max_shapes[n]
            if arr.ndim != len(hi) or any(d > m for d, m in zip(arr.shape, hi, strict=True)):
                raise BackendError(
                    f"{self.name}: input {n} shape {arr.shape} exceeds the engine profile {hi}"
                )
            self.host[n].view(arr.shape, arr.dtype)[...] = arr
            self.cuda.htod_async(self.device[n], self.host[n].ptr, arr.nbytes, self.stream)
            if not self.context.set_input_shape(n, arr.shape):
                raise BackendError(f"{self.name}: TensorRT rejected shape {arr.shape} for {n}")
        shapes = {n: tuple(int(d) for d in self.context.get_tensor_shape(n)) for n in self.outputs}
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError(f"{self.name}: TensorRT execute_async_v3 failed")
        views = {}
        for n, shape in shapes.items():
            views[n] = self.host[n].view(shape, self.dtypes[n])
            self.cuda.dtoh_async(self.host[n].ptr, self.device[n], views[n].nbytes, self.stream)
        self.cuda.stream_sync(self.stream)
        return {n: v.astype(np.float32, copy=True) for n, v in views.items()}

    def run_chunked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`run` over axis-0 chunks of at most `max_batch` rows of the batched inputs; outputs concatenated."""
        batched = [n for n in _BATCHED_INPUTS[self.name] if n in feeds]
        total = feeds[batched[0]].shape[0]
        step = self.max_batch
        if total <= step:
            return self.run(feeds)
        parts = []
        for start in range(0, total, step):
            chunk = {n: (a[start : start + step] if n in batched else a) for n, a in feeds.items()}
            parts.append(self.run(chunk))
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    def close(self) -> None:
        for n in list(self.device):
            self.cuda.free(self.device.pop(n))
            self.host.pop(n).free()
        self.cuda.stream_destroy(self.stream)


def _import_trt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError(
            "TensorRT is not installed here (pip install 'samclip-serve[trt]'); choose another backend"
        ) from exc
    return trt


class TensorRTBackend(GraphBackend):
    """Backend over the bundle's TensorRT engines. `trt` and `cuda` are injectable for tests."""

    name = "tensorrt"
    devices = ("cuda",)
    runtime = "tensorrt"

    def __init__(
        self,
        bundle: Any,
        settings: Any,
        metrics: Any = None,
        *,
        trt: Any = None,
        cuda: CudaRuntime | None = None,
    ) -> None:
        self.trt, self.cuda = trt, cuda
        super().__init__(bundle, settings, metrics)

    def prepare(self) -> None:
        wanted = setting(self.settings, "precision", "auto")
        self.precision = "fp16" if wanted == "auto" else wanted
        if self.precision not in ("fp16", "fp32"):
            raise BackendError(
                f"tensorrt engines are built as fp16 or fp32, not {self.precision!r} (SAMCLIP_PRECISION)"
            )
        self.device = int(setting(self.settings, "cuda_device", 0))
        self.trt = self.trt if self.trt is not None else _import_trt()
        self.cuda = self.cuda if self.cuda is not None else CudaRuntime(self.device)
        self.gpu = self.cuda.device_info()
        try:
            self.records = select_engines(
                self.bundle.manifest, self.precision, self.gpu.compute_capability, self.trt.__version__
            )
        except EngineMismatch as exc:
            raise BackendError(str(exc)) from None
        root = Path(self.bundle.path)
        for rec in self.records.values():
            path = root / rec.file
            if not path.is_file():
                raise BackendError(f"engine file {rec.file} listed in the manifest is missing from {root}")
            if sha256_file(path) != rec.sha256:
                raise BackendError(f"engine file {rec.file}: sha256 differs from the manifest (corrupt?)")
        self._runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))

    def choose_variant(self) -> VariantChoice:
        return VariantChoice(None, reason="tensorrt runs the engines in manifest.engines, not ONNX variants")

    def graph_source(self, graph: str) -> Path:
        return Path(self.bundle.path) / self.records[graph].file

    def load_graph(self, graph: str, source: Path) -> TrtGraph:
        self.cuda.make_current()
        return TrtGraph(self.trt, self._runtime, self.cuda, source, graph)

    def run_graph(self, graph: str, session: TrtGraph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.cuda.make_current()  # CUDA's current device is per thread: callers run graphs from any thread
        return session.run_chunked(feeds)

    def close_graph(self, session: TrtGraph) -> None:
        self.cuda.make_current()
        session.close()

    def describe(self) -> tuple[str, str, dict[str, Any]]:
        details = {
            "gpu": self.gpu.name,
            "compute_capability": list(self.gpu.compute_capability),
            "tensorrt": self.trt.__version__,
            "engines": {g: r.file for g, r in self.records.items()},
            "max_batch": {g: s.max_batch for g, s in self.sessions.items()},
        }
        return f"cuda:{self.device}", self.precision, details
