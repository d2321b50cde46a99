"""`backend=auto`: GPU backend when a GPU is visible (fake driver), else OpenVINO, else ONNX Runtime; an explicit
backend or variant wins; `device=cuda` without a usable GPU fails the load."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from samclip_bundle.cuda_probe import GpuProbe
from samclip_bundle.engines import engine_filename
from samclip_bundle.manifest import EngineRecord
from service.bundle import Bundle
from service.runtime.auto import Runtimes, resolve_backend
from service.runtime.base import BackendError
from service.runtime.registry import create_backend
from tests.samclip_bundle.bundle_fakes import SHA, FakeCudaDriver, synthetic_manifest

H200 = [("NVIDIA H200", (9, 0))]


class FakeRuntimes(Runtimes):
    """Which runtimes are "installed": each name in `have` is usable, the others say why not."""

    def __init__(self, *have: str) -> None:
        self.have = set(have)

    def tensorrt(self, bundle, gpu):
        return None if "tensorrt" in self.have else "TensorRT is not installed"

    def onnxruntime_cuda(self):
        return None if "ort-cuda" in self.have else "onnxruntime has no CUDAExecutionProvider"

    def torch_cuda(self):
        return None if "torch" in self.have else "torch sees no CUDA device"

    def openvino(self):
        return None if "openvino" in self.have else "OpenVINO is not installed"


def settings(**kw):
    return SimpleNamespace(**{"device": "auto", "variant": None, "cuda_device": 0, **kw})


def resolve(gpus, *have, **kw):
    return resolve_backend(
        settings(**kw), None, probe=GpuProbe(FakeCudaDriver(gpus)), runtimes=FakeRuntimes(*have)
    )


def test_gpu_visible_picks_the_first_gpu_runtime_and_says_so() -> None:
    choice = resolve(H200, "tensorrt", "ort-cuda", "torch", "openvino")
    assert (choice.name, choice.device, choice.variant) == ("tensorrt", "cuda", "auto")
    assert "NVIDIA GPU visible: NVIDIA H200" in choice.reason and "tensorrt runs on it" in choice.reason
    choice = resolve(H200, "ort-cuda", "torch", "openvino")
    assert (choice.name, choice.device) == ("onnxruntime", "cuda")
    assert "not tensorrt: TensorRT is not installed" in choice.reason
    assert resolve(H200, "torch", "openvino").name == "torch"


def test_gpu_without_gpu_runtime_falls_back_to_cpu_unless_cuda_is_required() -> None:
    choice = resolve(H200, "openvino")
    assert (choice.name, choice.device) == ("openvino", "cpu")
    assert "but no GPU runtime can use it" in choice.reason
    with pytest.raises(BackendError, match="SAMCLIP_DEVICE=cuda but NVIDIA GPU visible.*no GPU runtime"):
        resolve(H200, "openvino", device="cuda")


def test_no_gpu_picks_openvino_then_onnxruntime() -> None:
    choice = resolve([], "openvino", "torch")
    assert (choice.name, choice.device) == ("openvino", "cpu") and "no usable NVIDIA GPU" in choice.reason
    assert resolve([], "torch").name == "onnxruntime"
    with pytest.raises(BackendError, match="SAMCLIP_DEVICE=cuda but no usable NVIDIA GPU"):
        resolve([], "openvino", device="cuda")
    cpu = resolve(H200, "tensorrt", "openvino", device="cpu")  # a visible GPU is not used when told so
    assert (cpu.name, cpu.device) == ("openvino", "cpu") and "SAMCLIP_DEVICE=cpu" in cpu.reason
    assert resolve([], "openvino", variant="none").variant == "none"


def test_tensorrt_needs_engines_for_this_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real check: TensorRT installed (faked) is not enough, the bundle needs engines for this GPU's
    compute capability."""
    from service.runtime import auto

    monkeypatch.setattr(auto, "_installed", lambda module: True)
    manifest = synthetic_manifest()
    bundle = SimpleNamespace(path=tmp_path, manifest=manifest)
    gpu = GpuProbe(FakeCudaDriver(H200)).gpus()[0]
    assert (
        Runtimes().tensorrt(bundle, gpu) == "the bundle has no TensorRT engines for compute capability (9, 0)"
    )
    for cc, expected in (((8, 6), "no TensorRT engines"), ((9, 0), None)):
        manifest.engines = [
            EngineRecord(
                graph=g,
                file=engine_filename(g, cc, "10.9.0", "fp16"),
                sha256=SHA,
                compute_capability=cc,
                tensorrt="10.9.0",
                precision="fp16",
            )  # fmt: skip
            for g in manifest.graphs
        ]
        why = Runtimes().tensorrt(bundle, gpu)
        assert why is None if expected is None else expected in why


def test_create_backend_auto_on_this_machine(tiny_bundle: Path) -> None:
    """No GPU here: auto loads OpenVINO (installed by the dev extra) and reports why in info.details."""
    pytest.importorskip("openvino")
    backend = create_backend("auto", Bundle.load(tiny_bundle), SimpleNamespace(intra_op_threads=0))
    selection = backend.info.details["selection"]
    assert selection["requested"] == "auto" and selection["backend"] == backend.info.name == "openvino"
    assert "CPU: openvino" in selection["reason"] and selection["variant"] is None
    assert "no variant for openvino" in selection["variant_reason"]
    explicit = create_backend("onnxruntime", Bundle.load(tiny_bundle), SimpleNamespace(intra_op_threads=0))
    assert explicit.info.details["selection"]["reason"] == "asked for (SAMCLIP_BACKEND=onnxruntime)"
