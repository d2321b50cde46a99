"""torch backend (old name torch-cuda): same graphs as the ONNX bundle, run by the PyTorch modules. On CPU here:
fp32 parity with ONNX Runtime on the tiny bundle, bf16 autocast through the gates, weight resolution and
errors. The CUDA run is marked `gpu` and skipped without a GPU."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from samclip_bundle.manifest import Manifest, WeightSource  # noqa: E402
from service.runtime.base import BackendError  # noqa: E402
from service.runtime.registry import create_backend  # noqa: E402
from service.runtime.torch_backend import TorchBackend  # noqa: E402
from tests.service.runtime.gpu_fixtures import bundle_view, parity_inputs, reference, tiny_bundle_dir  # noqa: E402


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    return tiny_bundle_dir(request, tmp_path_factory)


def _cpu(precision="fp32"):
    return SimpleNamespace(torch_device="cpu", precision=precision)


def test_fp32_on_cpu_matches_onnxruntime(tiny):
    backend = TorchBackend(bundle_view(tiny), _cpu())
    assert backend.info.precision == "fp32" and backend.info.details["weights"].startswith("random-init")
    ref = reference(tiny)
    images, prompts, ids = parity_inputs(tiny)
    enc, enc_ref = backend.encode(images), ref.encode(images)  # batch of 2 in one call
    np.testing.assert_allclose(enc.image_embeddings, enc_ref.image_embeddings, atol=1e-4)
    np.testing.assert_allclose(enc.patch_tokens, enc_ref.patch_tokens, atol=1e-4)
    clip, clip_ref = backend.clip_head(enc_ref.patch_tokens), ref.clip_head(enc_ref.patch_tokens)
    np.testing.assert_allclose(clip.image_embedding, clip_ref.image_embedding, atol=1e-4)
    np.testing.assert_allclose(clip.patch_embeddings, clip_ref.patch_embeddings, atol=1e-4)
    np.testing.assert_allclose(backend.encode_text(ids), ref.encode_text(ids), atol=1e-4)
    dec = backend.decode(enc_ref.image_embeddings[:1], **prompts)  # 6 prompts: points, boxes, mask prompts
    dec_ref = ref.decode(enc_ref.image_embeddings[:1], **prompts)
    assert dec.low_res_masks.shape == dec_ref.low_res_masks.shape and dec.low_res_masks.dtype == np.float32
    np.testing.assert_allclose(dec.iou_predictions, dec_ref.iou_predictions, atol=1e-4)
    np.testing.assert_allclose(dec.low_res_masks, dec_ref.low_res_masks, atol=1e-3)


def test_bf16_autocast_passes_parity_gates(tiny):
    from samclip_bundle.parity import GPU_GATES, parity_report

    backend = TorchBackend(bundle_view(tiny), _cpu("bf16"))
    assert backend.info.precision == "bf16"
    report = parity_report(reference(tiny), backend, *parity_inputs(tiny))
    assert all(report[k] >= v for k, v in GPU_GATES.items()), report
    assert report["encoder_embedding_cosine"] < 1.0  # bf16 really ran (not silently fp32)


def test_prefers_weights_file_in_bundle(tiny, tmp_path):
    from model_export.build import build_model
    from model_export.checkpoint import save_samclip
    from samclip_bundle.hashing import sha256_file

    bundle = tmp_path / "b"
    shutil.copytree(tiny, bundle)
    weights = save_samclip(build_model("tiny", seed=123), bundle / "weights.safetensors")
    backend = TorchBackend(bundle_view(bundle), _cpu())
    assert backend.info.details["weights"] == "bundle file weights.safetensors"
    ids = parity_inputs(tiny)[2]
    assert not np.allclose(backend.encode_text(ids), reference(tiny).encode_text(ids), atol=1e-3)  # seed 123

    manifest = Manifest.read(bundle)
    manifest.weights.bundle_sha256 = sha256_file(weights)
    TorchBackend(bundle_view(bundle, manifest), _cpu())  # recorded hash matches
    manifest.weights.bundle_sha256 = "0" * 64
    with pytest.raises(BackendError, match="sha256 differs"):
        TorchBackend(bundle_view(bundle, manifest), _cpu())


def test_missing_weights_is_a_clear_error(tiny, tmp_path):
    manifest = Manifest.read(tiny)
    manifest.weights.random_init, manifest.weights.seed = False, None
    manifest.weights.sources = [
        WeightSource(kind="samclip", path=str(tmp_path / "gone.safetensors"), sha256="0" * 64)
    ]
    with pytest.raises(BackendError, match="cannot rebuild the PyTorch model.*gone.safetensors"):
        TorchBackend(bundle_view(tiny, manifest), _cpu())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_gpu_is_refused_and_auto_device_runs_on_cpu(tiny):
    with pytest.raises(BackendError, match="sees no CUDA device"):
        create_backend("torch-cuda", bundle_view(tiny), SimpleNamespace(precision="auto"))
    with pytest.raises(BackendError, match="sees no CUDA device"):
        TorchBackend(bundle_view(tiny), SimpleNamespace(device="cuda"))
    backend = create_backend("torch", bundle_view(tiny), SimpleNamespace(precision="auto"))
    assert (backend.info.name, backend.info.device, backend.info.precision) == ("torch", "cpu", "fp32")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with torch CUDA (none here)")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_passes_parity_gates(tiny, precision):  # pragma: no cover - GPU only
    from samclip_bundle.parity import GPU_GATES, parity_report

    backend = TorchBackend(bundle_view(tiny), SimpleNamespace(torch_device="cuda:0", precision=precision))
    report = parity_report(reference(tiny), backend, *parity_inputs(tiny))
    assert all(report[k] >= v for k, v in GPU_GATES.items()), report
