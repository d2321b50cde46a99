"""ONNX Runtime CUDA backend: the IO-binding path runs here on the CPU provider (same code, device "cpu") and
must equal plain session.run; graph/variant choice and the refusal of a CPU-only onnxruntime are checked.
The CUDA-provider run is marked `gpu` and skipped without onnxruntime-gpu and a GPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from service.runtime.base import BackendError, create_backend  # noqa: E402
from service.runtime.ort_cuda import OrtCudaBackend, choose_graph_file  # noqa: E402
from tests.service.runtime.gpu_fixtures import bundle_view, parity_inputs, reference, tiny_bundle_dir  # noqa: E402

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    return tiny_bundle_dir(request, tmp_path_factory)


def test_io_binding_path_equals_session_run(tiny):
    backend = OrtCudaBackend(bundle_view(tiny), SimpleNamespace(precision="auto"), device_type="cpu")
    assert backend.info.details["io_binding"] and backend.info.precision == "fp32"
    assert backend.graphs["sam_decoder"].outputs == [
        "iou_predictions",
        "low_res_masks",
    ]  # `masks` never bound
    ref = reference(tiny)
    images, prompts, ids = parity_inputs(tiny, images=3)
    enc, enc_ref = backend.encode(images), ref.encode(images)
    np.testing.assert_array_equal(enc.image_embeddings, enc_ref.image_embeddings)
    np.testing.assert_array_equal(enc.patch_tokens, enc_ref.patch_tokens)
    clip = backend.clip_head(enc.patch_tokens)
    np.testing.assert_array_equal(clip.patch_embeddings, ref.clip_head(enc.patch_tokens).patch_embeddings)
    np.testing.assert_array_equal(backend.encode_text(ids), ref.encode_text(ids))
    dec = backend.decode(enc.image_embeddings[1:2], **prompts)
    dec_ref = ref.decode(enc.image_embeddings[1:2], **prompts)
    np.testing.assert_array_equal(dec.low_res_masks, dec_ref.low_res_masks)
    np.testing.assert_array_equal(dec.iou_predictions, dec_ref.iou_predictions)
    # inputs given as float64 / int32 are cast to the graph's dtypes
    np.testing.assert_array_equal(backend.encode_text(ids.astype(np.int32)), ref.encode_text(ids))


def test_variant_choice():
    manifest = {
        "graphs": {"encoder": {"file": "encoder.onnx"}},
        "variants": {
            "encoder": [
                {"name": "int8", "file": "encoder.int8.onnx"},
                {"name": "fp16", "file": "encoder.fp16.onnx", "parity": {"passed": True}},
            ]
        },
    }
    assert choose_graph_file(manifest, "encoder", "fp32") == ("encoder.onnx", "fp32")
    assert choose_graph_file(manifest, "encoder", "auto") == ("encoder.fp16.onnx", "fp16")
    assert choose_graph_file(manifest, "encoder", "fp16") == ("encoder.fp16.onnx", "fp16")
    manifest["variants"]["encoder"][1]["parity"]["passed"] = False
    assert choose_graph_file(manifest, "encoder", "auto") == ("encoder.onnx", "fp32")  # failed parity: fp32
    other_runtime = {
        "name": "x",
        "precision": "fp16",
        "file": "encoder.ov.onnx",
        "runtimes": ["openvino"],
        "parity": {"passed": True},
    }
    assert choose_graph_file(
        {"graphs": manifest["graphs"], "variants": {"encoder": [other_runtime]}}, "encoder", "auto"
    ) == ("encoder.onnx", "fp32")
    other_runtime["runtimes"].append("ort-cuda")
    assert choose_graph_file(
        {"graphs": manifest["graphs"], "variants": {"encoder": [other_runtime]}}, "encoder", "auto"
    ) == ("encoder.ov.onnx", "fp16")
    with pytest.raises(BackendError, match="no fp16 variant of encoder"):
        choose_graph_file({"graphs": {"encoder": {"file": "e.onnx"}}}, "encoder", "fp16")


def test_uses_fp16_variant_file_when_recorded(tiny, tmp_path):
    """A variant entry is honoured: here the 'fp16' entry points at the fp32 file, so results are identical
    and the session really loaded the variant's path."""
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["variants"] = {
        "text_encoder": [
            {
                "name": "fp16",
                "file": manifest["graphs"]["text_encoder"]["file"],
                "sha256": manifest["graphs"]["text_encoder"]["sha256"],
                "parity": {"passed": True},
            }
        ]
    }
    backend = OrtCudaBackend(
        bundle_view(tiny, manifest), SimpleNamespace(precision="auto"), device_type="cpu"
    )
    assert backend.info.details["graphs"]["text_encoder"]["precision"] == "fp16"
    assert backend.info.details["graphs"]["encoder"]["precision"] == "fp32"


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
def test_cpu_only_onnxruntime_is_refused(tiny):
    with pytest.raises(BackendError, match="no CUDAExecutionProvider.*install onnxruntime-gpu"):
        create_backend("ort-cuda", bundle_view(tiny), SimpleNamespace(precision="auto", cuda_device=0))


@pytest.mark.gpu
@pytest.mark.skipif(
    not HAS_CUDA_EP, reason="needs onnxruntime-gpu and an NVIDIA GPU (CPU-only onnxruntime here)"
)
def test_cuda_provider_passes_parity_gates(tiny):  # pragma: no cover - GPU only
    from model_export.parity import parity_report
    from model_export.verify_gpu import GPU_GATES

    backend = create_backend("ort-cuda", bundle_view(tiny), SimpleNamespace(precision="auto", cuda_device=0))
    assert backend.info.device == "cuda:0"
    report = parity_report(reference(tiny), backend, *parity_inputs(tiny))
    assert all(report[k] >= v for k, v in GPU_GATES.items()), report
