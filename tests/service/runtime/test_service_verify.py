"""`python -m service.verify`: a serving backend gated against fp32 onnxruntime on the CPU. Runs here with the
torch backend on the CPU (bf16 autocast, GPU gates) and checks that unavailable backends fail with their reason."""

from __future__ import annotations

import json

import pytest

from service.verify import main, verify_backend
from tests.service.runtime.gpu_fixtures import tiny_bundle_dir


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    return tiny_bundle_dir(request, tmp_path_factory)


def test_torch_backend_bf16_on_cpu_passes_gpu_gates(tiny):
    pytest.importorskip("torch")
    report = verify_backend(tiny, "torch", samples=1, precision="bf16", torch_device="cpu")
    assert report["ok"], report
    assert report["precision"] == "bf16" and report["device"] == "cpu"
    assert report["gates"] == {"decoder_mask_iou": 0.97, "clip_image_cosine": 0.99, "clip_text_cosine": 0.99}
    assert report["decoder_mask_iou"] >= 0.97 and report["clip_text_cosine"] >= 0.99
    assert report["encoder_embedding_cosine"] < 1.0  # bf16 really ran
    assert report["samples"] == {"images": 1, "prompts": 16, "texts": 8}


def test_unavailable_backend_reports_reason_and_cli_exits_1(tiny, capsys):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt installed here")
    assert main([str(tiny), "--backend", "tensorrt"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "tensorrt" and out["ok"] is False and "TensorRT is not installed" in out["error"]
