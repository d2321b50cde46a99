"""ONNX Runtime CUDA backend (`SAMCLIP_BACKEND=ort-cuda`): CUDA execution provider with IO binding.

Each call uploads its inputs once as device OrtValues (`OrtValue.ortvalue_from_numpy(arr, "cuda", id)`),
binds them, lets ORT allocate the outputs on the device (`bind_output(name, "cuda", id)`), runs with
`run_with_iobinding` and copies only the outputs the pipeline needs back to host (the decoder's full-size
`masks` output is never bound). One session per graph; a lock per graph serialises calls.

Graph choice per graph: `settings.precision` "fp16" uses the manifest variant named "fp16" or with
precision "fp16" whose `runtimes` (if listed) include "ort-cuda" (`manifest["variants"][graph]`, written by
the export side, fp32 or fp16 I/O) and fails when
absent; "auto" (default) uses it when present and its recorded parity passed, else the fp32 graph; "fp32"
always uses the fp32 graph. Inputs are cast to each session input's dtype, outputs returned as float32.

ONNX Runtime silently falls back to CPU when the CUDA provider cannot load (missing CUDA/cuDNN libraries);
this backend refuses that with a BackendError instead, so a mis-installed GPU node is not served as "GPU".
`device_type="cpu"` (constructor keyword, used by tests) runs the same IO-binding path on the CPU provider.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.base import BackendError, BackendInfo, NamedGraphBackend

GRAPHS = ("encoder", "clip_head", "text_encoder", "sam_decoder")
OUTPUTS = {
    "encoder": ("image_embeddings", "patch_tokens"),
    "clip_head": ("image_embedding", "patch_embeddings"),
    "text_encoder": ("text_embedding",),
    "sam_decoder": ("iou_predictions", "low_res_masks"),
}
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def choose_graph_file(manifest: dict[str, Any], graph: str, precision: str) -> tuple[str, str]:
    """(file name, precision label) for one graph; BackendError when "fp16" is asked for but absent."""
    variants = [
        v
        for v in (manifest.get("variants") or {}).get(graph) or []
        if "fp16" in (v.get("name"), v.get("precision")) and "ort-cuda" in v.get("runtimes", ["ort-cuda"])
    ]
    if precision == "fp16":
        if not variants:
            raise BackendError(f"precision fp16 asked for but the bundle has no fp16 variant of {graph}")
        return variants[0]["file"], "fp16"
    if precision == "auto" and variants and (variants[0].get("parity") or {}).get("passed"):
        return variants[0]["file"], "fp16"
    return manifest["graphs"][graph]["file"], "fp32"


class _BoundGraph:
    """One InferenceSession run through IO binding on `device_type`:`device_id`."""

    def __init__(
        self,
        ort: Any,
        path: Path,
        graph: str,
        providers: list,
        device_type: str,
        device_id: int,
        options: Any,
    ) -> None:
        self.ort, self.graph, self.device_type, self.device_id = ort, graph, device_type, device_id
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if self.session.get_providers()[0] != wanted:
            raise BackendError(
                f"{graph}: ONNX Runtime did not enable {wanted} (got {self.session.get_providers()}); "
                "check that onnxruntime-gpu and matching CUDA/cuDNN libraries are installed"
            )
        self.input_dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        available = {o.name for o in self.session.get_outputs()}
        self.outputs = [n for n in OUTPUTS[graph] if n in available]
        self.lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            binding = self.session.io_binding()
            for name, dtype in self.input_dtypes.items():
                arr = np.ascontiguousarray(feeds[name], dtype=dtype)
                value = self.ort.OrtValue.ortvalue_from_numpy(arr, self.device_type, self.device_id)
                binding.bind_ortvalue_input(name, value)
            for name in self.outputs:
                binding.bind_output(name, self.device_type, self.device_id)
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(self.outputs, values, strict=True)}


class OrtCudaBackend(NamedGraphBackend):
    """Backend over the bundle's ONNX graphs on the CUDA execution provider (see module docstring)."""

    def __init__(self, bundle: Any, settings: Any, *, device_type: str = "cuda") -> None:
        try:
            import onnxruntime as ort  # noqa: PLC0415
        except ImportError as exc:
            raise BackendError("onnxruntime is not installed (pip install onnxruntime-gpu)") from exc
        device_id = int(getattr(settings, "cuda_device", 0) or 0)
        precision = getattr(settings, "precision", None) or "auto"
        if device_type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    "this onnxruntime has no CUDAExecutionProvider (available: "
                    f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
                )
            providers: list = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        threads = int(getattr(settings, "intra_op_threads", 0) or 0)
        if threads:
            options.intra_op_num_threads = threads
        root = Path(bundle.path)
        self.graphs: dict[str, _BoundGraph] = {}
        chosen = {}
        for graph in GRAPHS:
            file, label = choose_graph_file(bundle.manifest, graph, precision)
            chosen[graph] = {"file": file, "precision": label}
            self.graphs[graph] = _BoundGraph(
                ort, root / file, graph, providers, device_type, device_id, options
            )
        self.info = BackendInfo(
            name="ort-cuda",
            device=f"{device_type}:{device_id}" if device_type == "cuda" else "cpu",
            precision="fp16" if any(c["precision"] == "fp16" for c in chosen.values()) else "fp32",
            details={"onnxruntime": ort.__version__, "graphs": chosen, "io_binding": True},
        )

    def _run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.graphs[graph].run(feeds)
