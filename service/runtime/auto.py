"""`SAMCLIP_BACKEND=auto` (the default): which backend runs, on which device, and why.

`resolve_backend(settings, bundle)` picks, unless `device` is "cpu":
1. a GPU backend when the NVIDIA driver makes a GPU visible (samclip_bundle.cuda_probe), first that can run:
   tensorrt (TensorRT installed and the bundle has engines built for this GPU's compute capability), then
   onnxruntime on CUDA (an onnxruntime with the CUDAExecutionProvider, i.e. onnxruntime-gpu), then torch (torch
   and model_export installed and torch sees CUDA);
2. otherwise openvino when installed, else onnxruntime, on the CPU.
`device` "cuda" with no usable GPU (none visible, or no GPU runtime installed) is a BackendError: the process
stays live but not ready. The variant is the backend's own choice (setting `variant`, default "auto": the best
recorded variant whose parity gates passed for that runtime), reported next to this reason in
`info.details["selection"]`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from samclip_bundle.cuda_probe import GpuInfo, GpuProbe
from service.runtime.base import BackendError, setting


@dataclass(frozen=True)
class BackendChoice:
    """name: backend to create; variant: setting `variant` to apply ("auto", "none" or a name); device: "cpu"
    or "cuda"; reason: one line for /info and the start-up log."""

    name: str
    variant: str
    device: str
    reason: str


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Runtimes:
    """What is installed here. Each check returns None when usable, else why not (tests pass fakes)."""

    def tensorrt(self, bundle: Any, gpu: GpuInfo) -> str | None:
        if not _installed("tensorrt"):
            return "TensorRT is not installed"
        engines = [
            e
            for e in getattr(bundle.manifest, "engines", [])
            if tuple(e.compute_capability) == gpu.compute_capability
        ]
        if not engines:
            return f"the bundle has no TensorRT engines for compute capability {gpu.compute_capability}"
        return None

    def onnxruntime_cuda(self) -> str | None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)"
        return None

    def torch_cuda(self) -> str | None:
        if not (_installed("torch") and _installed("model_export")):
            return "torch / model_export (the export extra) are not installed"
        import torch

        return None if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device"

    def openvino(self) -> str | None:
        return None if _installed("openvino") else "OpenVINO is not installed"


def _gpu_backend(bundle: Any, gpu: GpuInfo, runtimes: Runtimes) -> tuple[str | None, list[str]]:
    """The first GPU backend that can run here, and why each earlier one could not."""
    why_not = []
    for name, check in (
        ("tensorrt", lambda: runtimes.tensorrt(bundle, gpu)),
        ("onnxruntime", runtimes.onnxruntime_cuda),
        ("torch", runtimes.torch_cuda),
    ):
        if (reason := check()) is None:
            return name, why_not
        why_not.append(f"not {name}: {reason}")
    return None, why_not


def resolve_backend(
    settings: Any, bundle: Any = None, *, probe: GpuProbe | None = None, runtimes: Runtimes | None = None
) -> BackendChoice:
    """The backend `auto` stands for (module docstring); explicit `backend` settings never come here."""
    device = str(setting(settings, "device", "auto"))
    variant = str(setting(settings, "variant", "auto"))
    runtimes = runtimes or Runtimes()
    if device not in ("auto", "cpu", "cuda"):
        raise BackendError(f"device {device!r}: expected auto, cpu or cuda (SAMCLIP_DEVICE)")
    notes: list[str] = []
    if device == "cpu":
        notes.append("SAMCLIP_DEVICE=cpu")
    else:
        probe = probe or GpuProbe()
        index = int(setting(settings, "cuda_device", 0))
        gpu = next((g for g in probe.gpus() if g.index == index), None)
        if gpu is not None:
            name, why_not = _gpu_backend(bundle, gpu, runtimes)
            seen = f"NVIDIA GPU visible: {gpu.name} (cuda:{gpu.index}, compute capability {gpu.compute_capability})"
            if name is not None:
                return BackendChoice(name, variant, "cuda", "; ".join([seen, *why_not, f"{name} runs on it"]))
            notes.append(f"{seen}, but no GPU runtime can use it ({'; '.join(why_not)})")
        else:
            notes.append(f"no usable NVIDIA GPU ({probe.last_reason or f'no device {index}'})")
        if device == "cuda":
            raise BackendError(f"SAMCLIP_DEVICE=cuda but {notes[-1]}")
    why_not_ov = runtimes.openvino()
    name = "openvino" if why_not_ov is None else "onnxruntime"
    tail = "OpenVINO is installed: the fastest CPU runtime here" if why_not_ov is None else why_not_ov
    return BackendChoice(name, variant, "cpu", "; ".join([*notes, f"CPU: {name} ({tail})"]))
