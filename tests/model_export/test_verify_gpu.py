"""`verify --backend {tensorrt,ort-cuda,torch-cuda}`: gated parity against the fp32 graphs. Runs here with the
torch backend on the CPU (bf16 autocast) and checks that unavailable GPU backends fail with their reason."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from model_export.cli import main  # noqa: E402
from model_export.verify_gpu import verify_gpu_backend  # noqa: E402
from tests.service.runtime.gpu_fixtures import tiny_bundle_dir  # noqa: E402


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    return tiny_bundle_dir(request, tmp_path_factory)


def test_torch_backend_bf16_on_cpu_passes_gates(tiny):
    report = verify_gpu_backend(
        tiny, "torch-cuda", samples=1, precision="bf16", torch_device="cpu", prompts=6
    )
    assert report["ok"], report
    assert report["precision"] == "bf16" and report["device"] == "cpu"
    assert report["decoder_mask_iou"] >= report["gates"]["decoder_mask_iou"] == 0.97
    assert report["clip_image_cosine"] >= 0.99 and report["clip_text_cosine"] >= 0.99
    assert report["samples"] == {"images": 1, "prompts": 6, "texts": 8}


def test_unavailable_backend_reports_reason_and_cli_exits_1(tiny, capsys):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt installed here")
    report = verify_gpu_backend(tiny, "tensorrt")
    assert not report["ok"] and "TensorRT is not installed" in report["error"]
    assert main(["verify", str(tiny), "--backend", "tensorrt"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "tensorrt" and out["ok"] is False
