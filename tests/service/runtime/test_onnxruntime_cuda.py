"""ONNX Runtime on CUDA (`device=cuda`, old name `ort-cuda`): the IO-binding path runs here on the CPU provider
(same code, device "cpu") and must equal plain session.run; a CPU-only onnxruntime is refused. The CUDA-provider
run is marked `gpu` and skipped without onnxruntime-gpu and a GPU."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from service.runtime.base import BackendError  # noqa: E402
from service.runtime.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from service.runtime.registry import create_backend  # noqa: E402
from tests.service.runtime.gpu_fixtures import bundle_view, parity_inputs, reference, tiny_bundle_dir  # noqa: E402

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    return tiny_bundle_dir(request, tmp_path_factory)


def test_io_binding_path_equals_session_run(tiny):
    backend = OnnxRuntimeBackend(bundle_view(tiny), SimpleNamespace(precision="auto"), io_binding=True)
    assert backend.info.details["io_binding"] and backend.info.precision == "fp32"
    assert backend.sessions["sam_decoder"].outputs == ["iou_predictions", "low_res_masks"]
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


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize("name, settings", [("ort-cuda", {}), ("onnxruntime", {"device": "cuda"})])
def test_cpu_only_onnxruntime_is_refused(tiny, name, settings):
    with pytest.raises(BackendError, match="no CUDAExecutionProvider.*install onnxruntime-gpu"):
        create_backend(name, bundle_view(tiny), SimpleNamespace(precision="auto", cuda_device=0, **settings))


@pytest.mark.gpu
@pytest.mark.skipif(
    not HAS_CUDA_EP, reason="needs onnxruntime-gpu and an NVIDIA GPU (CPU-only onnxruntime here)"
)
def test_cuda_provider_passes_parity_gates(tiny):  # pragma: no cover - GPU only
    from samclip_bundle.parity import GPU_GATES, parity_report

    backend = create_backend("ort-cuda", bundle_view(tiny), SimpleNamespace(precision="auto", cuda_device=0))
    assert backend.info.device == "cuda:0" and backend.info.details["io_binding"]
    report = parity_report(reference(tiny), backend, *parity_inputs(tiny))
    assert all(report[k] >= v for k, v in GPU_GATES.items()), report
