"""Native TensorRT backend: engine selection/refusal, buffers, chunking and CUDA error handling.

TensorRT and a GPU are not available on the CPU machines, so the backend runs here against a fake `tensorrt`
module (engines that compute known numpy functions) and a fake cuda-python runtime whose "device memory" is
host memory moved with real memcpy — the backend's own code (profiles, pinned views, H2D/D2H, set_input_shape,
execute_async_v3, chunking) runs unchanged. The real-GPU test at the bottom is marked `gpu` and skipped here.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from samclip_bundle.engines import engine_filename
from samclip_bundle.manifest import EngineRecord, Manifest
from service.runtime.base import BackendError
from service.runtime.cuda_rt import CudaRuntime
from service.runtime.registry import create_backend
from service.runtime.tensorrt import TensorRTBackend
from tests.samclip_bundle.bundle_fakes import synthetic_manifest
from tests.service.runtime.trt_fakes import SPECS, C, D, FakeCudart, FakeTrt, G, L, S, W  # noqa: E402


# ----------------------------------------------------------------------------- fixtures
def _records(tmp_path: Path, cc=(9, 0), trt_version="10.9.0", precision="fp16") -> list[EngineRecord]:
    """Fake engine files in tmp_path (their bytes name the graph) and their manifest records."""
    records = []
    for graph in SPECS:
        name = engine_filename(graph, cc, trt_version, precision)
        blob = json.dumps({"graph": graph}).encode()
        (tmp_path / name).write_bytes(blob)
        records.append(
            EngineRecord(
                graph=graph,
                file=name,
                sha256=hashlib.sha256(blob).hexdigest(),
                compute_capability=cc,
                device_name="Some GPU",
                tensorrt=trt_version,
                precision=precision,
            )  # fmt: skip
        )
    return records


def _bundle(tmp_path: Path, cc=(9, 0), trt_version="10.9.0", precision="fp16") -> SimpleNamespace:
    manifest = synthetic_manifest(size=S, patch=S // G, c=C, w=W, d=D)
    manifest.engines = _records(tmp_path, cc, trt_version, precision)
    return SimpleNamespace(path=tmp_path, manifest=manifest)


def _backend(bundle, cudart=None, trt=None, precision="fp16"):
    settings = SimpleNamespace(precision=precision, cuda_device=0)
    return TensorRTBackend(
        bundle, settings, trt=trt or FakeTrt(), cuda=CudaRuntime(0, cudart=cudart or FakeCudart())
    )


# ----------------------------------------------------------------------------- tests
def test_runs_every_graph_with_chunking(tmp_path):
    cudart, trt = FakeCudart(), FakeTrt()
    backend = _backend(_bundle(tmp_path), cudart, trt)
    assert backend.info.details["compute_capability"] == [9, 0] and backend.info.precision == "fp16"
    assert backend.info.details["max_batch"]["encoder"] == 2

    rng = np.random.default_rng(0)
    images = rng.standard_normal((5, 3, S, S)).astype(np.float32)  # 5 > profile max 2 -> 3 chunks
    enc = backend.encode(images)
    assert enc.image_embeddings.shape == (5, C, G, G) and enc.patch_tokens.shape == (5, G, G, W)
    np.testing.assert_allclose(enc.image_embeddings[:, 0, 0, 0], images.mean((1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(enc.patch_tokens[:, 1, 1, 2], images.max((1, 2, 3)), rtol=1e-6)
    assert backend.sessions["encoder"].engine.runs == 3

    clip = backend.clip_head(enc.patch_tokens)
    np.testing.assert_allclose(clip.image_embedding, enc.patch_tokens[..., :D].sum((1, 2)), rtol=1e-5)
    assert clip.patch_embeddings.shape == (5, G, G, D)

    ids = np.arange(4 * L, dtype=np.int64).reshape(4, L)  # 4 > max 3 -> 2 chunks; int64 kept as int64
    txt = backend.encode_text(ids)
    np.testing.assert_array_equal(txt[:, 0], ids[:, 0].astype(np.float32))

    k = 6  # > max prompts 4; image_embeddings is shared by every chunk
    coords = rng.uniform(0, S, (k, 3, 2)).astype(np.float32)
    masks = rng.standard_normal((k, 1, 4 * G, 4 * G)).astype(np.float32)
    out = backend.decode(
        enc.image_embeddings[:1], coords, np.ones((k, 3), np.float32), masks, np.ones(k, np.float32)
    )
    assert out.iou_predictions.shape == (k, 4) and out.low_res_masks.shape == (k, 4, 4 * G, 4 * G)
    np.testing.assert_allclose(out.iou_predictions[:, 2], coords.sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        out.low_res_masks[:, 3], masks[:, 0] + enc.image_embeddings[0].mean(), rtol=1e-5
    )
    assert sorted(trt.deserialized) == sorted(SPECS)

    n_buffers = len(cudart.buffers)
    assert n_buffers > 0  # device + pinned buffers for every tensor, sized once at load
    backend.close()
    assert cudart.buffers == {}


def test_refuses_engine_for_other_compute_capability(tmp_path):
    trt = FakeTrt()
    bundle = _bundle(tmp_path, cc=(8, 6))
    with pytest.raises(BackendError) as err:
        _backend(bundle, FakeCudart(cc=(9, 0)), trt)
    msg = str(err.value)
    assert "compute capability 8.6" in msg and "this GPU is 9.0" in msg
    assert "encoder.sm86.trt10.9.0.fp16.engine" in msg and "build-trt" in msg
    assert trt.deserialized == []  # refused before any engine is deserialized


def test_refuses_engine_for_other_tensorrt_version(tmp_path):
    with pytest.raises(BackendError, match=r"TensorRT 10\.0\.1, this process has TensorRT 10\.9\.0"):
        _backend(_bundle(tmp_path, trt_version="10.0.1"))


def test_refuses_bundle_without_engines_of_that_precision(tmp_path):
    with pytest.raises(BackendError, match=r"no fp32 TensorRT engines \(has: fp16\)"):
        _backend(_bundle(tmp_path), precision="fp32")


def test_refuses_corrupt_engine_file(tmp_path):
    bundle = _bundle(tmp_path)
    (tmp_path / bundle.manifest.engines[0].file).write_bytes(b"garbage")
    with pytest.raises(BackendError, match="sha256 differs"):
        _backend(bundle)


def test_cuda_errors_become_backend_errors(tmp_path):
    with pytest.raises(BackendError, match="cudaMalloc failed: out of memory"):
        _backend(_bundle(tmp_path), FakeCudart(fail_malloc=True))


def test_input_beyond_profile_is_a_backend_error(tmp_path):
    backend = _backend(_bundle(tmp_path))
    with pytest.raises(BackendError, match="exceeds the engine profile"):
        backend.decode(
            np.zeros((1, C, G, G), np.float32),
            np.zeros((1, 9, 2), np.float32),
            np.zeros((1, 9), np.float32),
            np.zeros((1, 1, 4 * G, 4 * G), np.float32),
            np.zeros(1, np.float32),
        )


def test_registry_without_tensorrt_gives_clear_error(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="TensorRT is not installed"):
            create_backend("tensorrt", _bundle(tmp_path), SimpleNamespace(precision="fp16", cuda_device=0))
    else:
        pytest.skip("tensorrt is installed here; the GPU test covers it")


def test_real_cuda_python_without_gpu_is_a_backend_error():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    from cuda.bindings import runtime as cudart

    err, count = cudart.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(BackendError, match="cudaGetDeviceCount failed"):
        CudaRuntime(0)


def test_pinned_view_bounds():
    rt = CudaRuntime(0, cudart=FakeCudart())
    from service.runtime.cuda_rt import PinnedBuffer

    buf = PinnedBuffer(rt, 64)
    view = buf.view((4, 4), np.float32)
    view[...] = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(buf.view((16,), np.float32), np.arange(16, dtype=np.float32))
    with pytest.raises(BackendError, match="pinned buffer too small"):
        buf.view((5, 4), np.float32)
    buf.free()
    assert buf.ptr == 0 and rt.cudart.buffers == {}


def _has_cuda() -> bool:
    try:
        CudaRuntime(0)
        import tensorrt  # noqa: F401
    except (BackendError, ImportError):
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs an NVIDIA GPU, cuda-python and TensorRT 10 (none here)")
def test_real_engines_on_gpu(tiny_bundle, tmp_path):  # pragma: no cover - GPU only
    import shutil

    from model_export.trt_build import ProfileLimits, build_bundle_engines

    bundle_dir = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle_dir)
    build_bundle_engines(bundle_dir, "fp32", ProfileLimits(max_batch=2, max_prompts=4, max_points=6))
    from service.bundle import Bundle

    backend = create_backend(
        "tensorrt", Bundle.load(bundle_dir), SimpleNamespace(precision="fp32", cuda_device=0)
    )
    size = Bundle.load(bundle_dir).image_size
    out = backend.encode(np.zeros((3, 3, size, size), np.float32))
    assert out.image_embeddings.shape[0] == 3


def test_app_stays_live_but_not_ready_with_mismatched_engines(request, tmp_path_factory, monkeypatch):
    """Through the real app: a bundle whose engines were built for another GPU -> /healthz 200, /readyz 503
    with the refusal as the reason; the process keeps serving."""
    import shutil
    import time

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import service.runtime.tensorrt as trt_backend
    from service.main import create_app
    from service.settings import Settings
    from tests.service.runtime.gpu_fixtures import tiny_bundle_dir

    bundle = tmp_path_factory.mktemp("trt_bundle") / "b"
    shutil.copytree(tiny_bundle_dir(request, tmp_path_factory), bundle)
    manifest = Manifest.read(bundle)
    manifest.engines = _records(bundle, cc=(8, 6))  # writes sm86 fake engine files
    manifest.write(bundle)
    fake_trt = FakeTrt()
    monkeypatch.setattr(trt_backend, "_import_trt", lambda: fake_trt)
    monkeypatch.setattr(
        trt_backend, "CudaRuntime", lambda device: CudaRuntime(device, cudart=FakeCudart(cc=(9, 0)))
    )

    app = create_app(Settings(bundle=bundle, backend="tensorrt", warmup=False))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        reason = ready.json()["reason"]
        assert (
            "refusing TensorRT engines" in reason
            and "compute capability 8.6" in reason
            and "build-trt" in reason
        )
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503  # still serving, still not ready
    assert fake_trt.deserialized == []


def test_precision_setting(tmp_path):
    bundle = _bundle(tmp_path)
    for wanted in (None, "auto", "fp16"):
        settings = SimpleNamespace(precision=wanted, cuda_device=0)
        backend = TensorRTBackend(bundle, settings, trt=FakeTrt(), cuda=CudaRuntime(0, cudart=FakeCudart()))
        assert backend.info.precision == "fp16"
    with pytest.raises(BackendError, match="fp16 or fp32, not 'bf16'"):
        TensorRTBackend(
            bundle, SimpleNamespace(precision="bf16"), trt=FakeTrt(), cuda=CudaRuntime(0, cudart=FakeCudart())
        )


def test_every_calling_thread_makes_the_device_current(tmp_path):
    """CUDA's current device is per thread: graphs run from the batcher and request threads, not only the
    loader's. The fake runtime fails copies on a thread that never called cudaSetDevice."""
    cudart = FakeCudart()
    backend = _backend(_bundle(tmp_path), cudart)
    images = np.ones((1, 3, S, S), np.float32)
    results, errors = {}, []

    def worker(i: int) -> None:
        try:
            results[i] = float(backend.encode(images * i).image_embeddings[0, 0, 0, 0])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == {1: 1.0, 2: 2.0, 3: 3.0}
    assert {t.ident for t in threads} <= set(cudart.current) and set(cudart.current.values()) == {0}
    closer = threading.Thread(target=backend.close)  # closing frees device memory from any thread too
    closer.start()
    closer.join()
    assert cudart.buffers == {}


def test_metrics_record_every_graph(tmp_path):
    seen = []
    backend = _backend(_bundle(tmp_path))
    backend.metrics = SimpleNamespace(observe_graph=lambda graph, seconds: seen.append((graph, seconds >= 0)))
    backend.encode_text(np.zeros((2, L), np.int64))
    backend.clip_head(np.zeros((1, G, G, W), np.float32))
    assert seen == [("text_encoder", True), ("clip_head", True)]
