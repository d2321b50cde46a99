"""Native TensorRT backend: engine selection/refusal, buffers, chunking and CUDA error handling.

TensorRT and a GPU are not available on the CPU machines, so the backend runs here against a fake `tensorrt`
module (engines that compute known numpy functions) and a fake cuda-python runtime whose "device memory" is
host memory moved with real memcpy — the backend's own code (profiles, pinned views, H2D/D2H, set_input_shape,
execute_async_v3, chunking) runs unchanged. The real-GPU test at the bottom is marked `gpu` and skipped here.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.runtime.base import BackendError, create_backend
from service.runtime.cuda_rt import CudaRuntime
from service.runtime.tensorrt import TensorRTBackend
from service.runtime.trt_engines import engine_filename

S, C, G, W, D, L = 32, 8, 2, 6, 4, 77  # image size, emb channels, grid, width, embed dim, context


# ----------------------------------------------------------------------------- fake cuda-python runtime
class FakeCudart:
    """cuda.bindings.runtime look-alike: (err, value) tuples; memory is ctypes buffers, copies are memmove."""

    cudaStreamNonBlocking = 1
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, cc=(9, 0), fail_malloc=False):
        self.cc, self.fail_malloc = cc, fail_malloc
        self.buffers: dict[int, ctypes.Array] = {}
        self.copies = 0
        self.streams_synced = 0

    def _alloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def cudaGetDeviceCount(self):
        return (0, 1)

    def cudaSetDevice(self, dev):
        return (0,)

    def cudaGetDeviceProperties(self, dev):
        return (0, SimpleNamespace(name=b"Fake GPU", major=self.cc[0], minor=self.cc[1]))

    def cudaMalloc(self, n):
        return (2, None) if self.fail_malloc else (0, self._alloc(n))

    def cudaMallocHost(self, n):
        return (0, self._alloc(n))

    def cudaFree(self, ptr):
        self.buffers.pop(ptr)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        self.copies += 1
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        return (0, 7)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        self.streams_synced += 1
        return (0,)

    def cudaGetErrorString(self, err):
        return (0, b"out of memory" if err == 2 else b"error")


# ----------------------------------------------------------------------------- fake tensorrt module
def _from_addr(ptr, shape, dtype):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_byte * n).from_address(ptr), dtype=dtype).reshape(shape)


# graph -> (inputs {name: (dtype, max shape)}, outputs {name: (shape_fn(in_shapes), fn(in_arrays))})
SPECS = {
    "encoder": (
        {"image": (np.float32, (2, 3, S, S))},
        {
            "image_embeddings": (
                lambda s: (s["image"][0], C, G, G),
                lambda a: np.broadcast_to(
                    a["image"].mean((1, 2, 3))[:, None, None, None], (len(a["image"]), C, G, G)
                ),
            ),
            "patch_tokens": (
                lambda s: (s["image"][0], G, G, W),
                lambda a: np.broadcast_to(
                    a["image"].max((1, 2, 3))[:, None, None, None], (len(a["image"]), G, G, W)
                ),
            ),
        },
    ),
    "clip_head": (
        {"patch_tokens": (np.float32, (2, G, G, W))},
        {
            "image_embedding": (
                lambda s: (s["patch_tokens"][0], D),
                lambda a: a["patch_tokens"][..., :D].sum((1, 2)),
            ),
            "patch_embeddings": (
                lambda s: (*s["patch_tokens"][:3], D),
                lambda a: a["patch_tokens"][..., :D] * 2,
            ),
        },
    ),
    "text_encoder": (
        {"input_ids": (np.int64, (3, L))},
        {
            "text_embedding": (
                lambda s: (s["input_ids"][0], D),
                lambda a: np.repeat(a["input_ids"][:, :1].astype(np.float32), D, 1),
            )
        },
    ),
    "sam_decoder": (
        {
            "image_embeddings": (np.float32, (1, C, G, G)),
            "point_coords": (np.float32, (4, 5, 2)),
            "point_labels": (np.float32, (4, 5)),
            "mask_input": (np.float32, (4, 1, 4 * G, 4 * G)),
            "has_mask_input": (np.float32, (4,)),
        },
        {
            "iou_predictions": (
                lambda s: (s["point_coords"][0], 4),
                lambda a: np.repeat(a["point_coords"].sum((1, 2))[:, None], 4, 1),
            ),
            "low_res_masks": (
                lambda s: (s["point_coords"][0], 4, 4 * G, 4 * G),
                lambda a: np.broadcast_to(
                    (a["mask_input"] + a["image_embeddings"].mean()), (len(a["mask_input"]), 4, 4 * G, 4 * G)
                ),
            ),
        },
    ),
}


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addr = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return all(d <= m for d, m in zip(shape, self.engine.inputs[name][1], strict=True))

    def get_tensor_shape(self, name):
        return self.engine.outputs[name][0](self.shapes)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        assert stream == 7
        arrays = {
            n: _from_addr(self.addr[n], self.shapes[n], dt) for n, (dt, _) in self.engine.inputs.items()
        }
        for n, (shape_fn, fn) in self.engine.outputs.items():
            _from_addr(self.addr[n], shape_fn(self.shapes), np.float32)[...] = fn(arrays)
        self.engine.runs += 1
        return True


class FakeEngine:
    def __init__(self, graph):
        self.inputs, self.outputs = SPECS[graph]
        self.names = list(self.inputs) + list(self.outputs)
        self.runs = 0

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "IN" if name in self.inputs else "OUT"

    def get_tensor_dtype(self, name):
        return self.inputs[name][0] if name in self.inputs else np.float32

    def get_tensor_profile_shape(self, name, profile):
        hi = self.inputs[name][1]
        return (tuple(1 for _ in hi), hi, hi)

    def create_execution_context(self):
        return FakeContext(self)


class FakeTrt:
    __version__ = "10.9.0"
    TensorIOMode = SimpleNamespace(INPUT="IN", OUTPUT="OUT")
    Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

    def __init__(self):
        self.deserialized: list[str] = []
        trt = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, blob):
                graph = json.loads(blob)["graph"]
                trt.deserialized.append(graph)
                return FakeEngine(graph)

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return dtype


# ----------------------------------------------------------------------------- fixtures
def _bundle(tmp_path: Path, cc=(9, 0), trt_version="10.9.0", precision="fp16") -> SimpleNamespace:
    records = []
    for graph in SPECS:
        name = engine_filename(graph, cc, trt_version, precision)
        blob = json.dumps({"graph": graph}).encode()
        (tmp_path / name).write_bytes(blob)
        records.append(
            {
                "graph": graph,
                "file": name,
                "sha256": hashlib.sha256(blob).hexdigest(),
                "compute_capability": list(cc),
                "device_name": "Some GPU",
                "tensorrt": trt_version,
                "precision": precision,
            }
        )
    return SimpleNamespace(path=tmp_path, manifest={"engines": records})


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
    assert backend.graphs["encoder"].engine.runs == 3

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
    (tmp_path / bundle.manifest["engines"][0]["file"]).write_bytes(b"garbage")
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
    pytest.importorskip("service.runtime.base")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="TensorRT is not installed"):
            create_backend("tensorrt", _bundle(tmp_path), SimpleNamespace(precision="fp16", cuda_device=0))
    else:
        pytest.skip("tensorrt is installed here; the GPU test covers it")


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
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"] = _bundle(bundle, cc=(8, 6)).manifest["engines"]  # writes sm86 fake engine files
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    fake_trt = FakeTrt()
    monkeypatch.setattr(trt_backend, "_import_trt", lambda: fake_trt)
    monkeypatch.setattr(trt_backend, "CudaRuntime", lambda device: CudaRuntime(device, cudart=FakeCudart(cc=(9, 0))))

    app = create_app(Settings(bundle=bundle, backend="tensorrt", warmup=False))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        reason = ready.json()["reason"]
        assert "refusing TensorRT engines" in reason and "compute capability 8.6" in reason and "build-trt" in reason
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503  # still serving, still not ready
    assert fake_trt.deserialized == []
