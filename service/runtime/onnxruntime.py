"""ONNX Runtime backend (`SAMCLIP_BACKEND=onnxruntime`): one InferenceSession per graph, on the CPU or a GPU.

Execution providers:
- setting `device` "cuda" (or the old name `ort-cuda`): CUDAExecutionProvider on `cuda_device`, CPU as ORT's
  fallback for unsupported ops. A build without the CUDA provider, or a session where ORT silently fell back to
  the CPU (missing CUDA/cuDNN libraries), is refused with a BackendError, so a mis-installed GPU node is never
  served as "GPU";
- otherwise setting `providers` (CPUExecutionProvider by default; CUDA / TensorRT providers where this build
  has them; unavailable ones are dropped with a warning, CPU is always the last fallback); `device` "cpu"
  keeps only the CPU provider.
When a session runs on CUDA, every call goes through IO binding: inputs uploaded once as device OrtValues,
outputs allocated by ORT on the device and copied back once (the `io_binding` keyword forces this path on the
CPU provider too, for tests).

Variants (runtime label "onnxruntime" on the CPU): setting `variant` ("auto": the passing int8 variant written by
`python -m model_export optimize BUNDLE --target ort-int8`; "none"; or a name); the old name
`onnxruntime-int8` requires one. On CUDA (label "onnxruntime-cuda") the fp32 graphs run: no step writes fp16
ONNX variants, fp16 on a GPU is the tensorrt and torch backends' job (setting `precision` fp16/bf16 is refused).
Session options: intra_op_num_threads = `intra_op_threads` (0 = the CPUs this process may use, runtime/cpus.py),
inter_op_num_threads = `inter_op_threads`, graph optimisation ALL; intra_op_threads 0 = `cpus` when set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from samclip_bundle.graphs import GRAPH_OUTPUTS
from service.runtime.base import BackendError, GraphBackend, inference_threads, setting

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def select_providers(requested: list[str]) -> list[str]:
    """`requested` minus the providers this build lacks (warned about), CPU appended as the last fallback."""
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
    opts.intra_op_num_threads = inference_threads(settings)
    opts.inter_op_num_threads = max(1, int(setting(settings, "inter_op_threads", 1)))
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class _BoundSession:
    """An InferenceSession run through IO binding on `device_type`:`device_id`."""

    def __init__(self, session: ort.InferenceSession, graph: str, device_type: str, device_id: int) -> None:
        self.session, self.device_type, self.device_id = session, device_type, device_id
        self.input_dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in session.get_inputs()}
        self.outputs = list(GRAPH_OUTPUTS[graph])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        for name, dtype in self.input_dtypes.items():
            arr = np.ascontiguousarray(feeds[name], dtype=dtype)
            value = ort.OrtValue.ortvalue_from_numpy(arr, self.device_type, self.device_id)
            binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(self.outputs, values, strict=True)}


class OnnxRuntimeBackend(GraphBackend):
    """Backend protocol on ONNX Runtime (see module docstring)."""

    name = "onnxruntime"
    devices = ("cpu", "cuda")

    def __init__(
        self, bundle: Any, settings: Any, metrics: Any = None, *, io_binding: bool | None = None
    ) -> None:
        self._io_binding = io_binding
        super().__init__(bundle, settings, metrics)

    def prepare(self) -> None:
        self.device_id = int(setting(self.settings, "cuda_device", 0))
        device = str(setting(self.settings, "device", "auto"))
        precision = str(setting(self.settings, "precision", "auto"))
        if precision in ("fp16", "bf16"):
            raise BackendError(
                f"the onnxruntime backend runs the bundle's fp32 graphs or int8 variants, not {precision}; "
                "16-bit GPU inference is the tensorrt or torch backend (SAMCLIP_BACKEND)"
            )
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    "this onnxruntime has no CUDAExecutionProvider (available: "
                    f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
                )
            self.providers: list = [
                ("CUDAExecutionProvider", {"device_id": self.device_id}),
                "CPUExecutionProvider",
            ]
        elif device == "cpu":
            self.providers = ["CPUExecutionProvider"]
        else:
            self.providers = select_providers(
                list(setting(self.settings, "providers", ["CPUExecutionProvider"]))
            )
        first = self.providers[0][0] if isinstance(self.providers[0], tuple) else self.providers[0]
        self.on_gpu = first in _GPU_PROVIDERS
        self.runtime = "onnxruntime-cuda" if self.on_gpu else "onnxruntime"
        self.options = session_options(self.settings)

    def load_graph(self, graph: str, source: Path) -> Any:
        session = ort.InferenceSession(str(source), sess_options=self.options, providers=self.providers)
        used = session.get_providers()
        if self.on_gpu and used[0] not in _GPU_PROVIDERS:
            raise BackendError(
                f"{graph}: ONNX Runtime did not enable {self.providers[0]} (got {used}); check that "
                "onnxruntime-gpu and matching CUDA/cuDNN libraries are installed"
            )
        bind = self.on_gpu if self._io_binding is None else self._io_binding
        if bind:
            return _BoundSession(session, graph, "cuda" if self.on_gpu else "cpu", self.device_id)
        return session

    def run_graph(self, graph: str, session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(session, _BoundSession):
            return session.run(feeds)
        names = list(GRAPH_OUTPUTS[graph])
        return dict(zip(names, session.run(names, feeds), strict=True))

    def describe(self) -> tuple[str, str, dict[str, Any]]:
        _, precision, _ = super().describe()
        encoder = self.sessions["encoder"]
        used = (encoder.session if isinstance(encoder, _BoundSession) else encoder).get_providers()
        details = {
            "providers": used,
            "onnxruntime": ort.__version__,
            "io_binding": isinstance(encoder, _BoundSession),
            "intra_op_threads": self.options.intra_op_num_threads,
            "inter_op_threads": self.options.inter_op_num_threads,
        }
        return (f"cuda:{self.device_id}" if self.on_gpu else "cpu"), precision, details
