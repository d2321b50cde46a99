"""OnnxRuntimeBackend on the real exported tiny bundle: shapes, metrics from the base class, per-graph locks,
providers and threads, and that the format-2 decoder has exactly the two outputs the service reads."""

from __future__ import annotations

import os
import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.bundle import Bundle
from service.runtime.base import Backend, BackendError
from service.runtime.cpus import available_cpus
from service.runtime.onnxruntime import OnnxRuntimeBackend, session_options
from service.runtime.registry import create_backend


def _settings(**kw):
    base = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 0, "inter_op_threads": 1}
    return SimpleNamespace(**{**base, **kw})


class GraphTimes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def observe_graph(self, graph: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(graph)


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def backend(bundle) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle, _settings(), metrics=GraphTimes())


def test_all_graphs_shapes_and_normalisation(backend: OnnxRuntimeBackend, bundle: Bundle) -> None:
    assert isinstance(backend, Backend)
    s, h = bundle.image_size, bundle.embed_grid
    enc = backend.encode(np.random.default_rng(0).normal(size=(3, 3, s, s)).astype(np.float32))
    assert enc.image_embeddings.shape == (3, 64, h, h) and enc.patch_tokens.shape == (3, h, h, 96)
    clip = backend.clip_head(enc.patch_tokens)
    assert clip.image_embedding.shape == (3, 64) and clip.patch_embeddings.shape == (3, h, h, 64)
    np.testing.assert_allclose(np.linalg.norm(clip.patch_embeddings, axis=-1), 1.0, atol=1e-4)
    ids = np.zeros((5, 77), np.int64)
    ids[:, 0], ids[:, 1] = 49406, 49407
    text = backend.encode_text(ids)
    assert text.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, atol=1e-4)
    k, n, g = 4, 3, 4 * h
    dec = backend.decode(
        enc.image_embeddings[:1],
        np.random.default_rng(1).uniform(0, s, (k, n, 2)).astype(np.float32),
        np.array([[1, 0, -1]] * k, np.float32),
        np.zeros((k, 1, g, g), np.float32),
        np.zeros((k,), np.float32),
    )
    assert dec.iou_predictions.shape == (k, 4) and dec.low_res_masks.shape == (k, 4, g, g)
    assert set(backend.metrics.calls) == {"encoder", "clip_head", "text_encoder", "sam_decoder"}


def test_decoder_has_exactly_the_contract_outputs(backend, bundle) -> None:
    """Format 2: `masks` was stripped once at export; the session computes nothing else."""
    model = onnx.load(str(bundle.graph_path("sam_decoder")))
    assert [o.name for o in model.graph.output] == ["iou_predictions", "low_res_masks"]
    assert not any(n.op_type == "Resize" and "masks" in n.output for n in model.graph.node)
    assert [o.name for o in backend.sessions["sam_decoder"].get_outputs()] == [
        "iou_predictions",
        "low_res_masks",
    ]
    assert backend.info.details["graphs"]["sam_decoder"] == "sam_decoder.onnx"


def test_calls_on_one_graph_are_serialised_across_threads(bundle) -> None:
    """The base class holds one lock per graph: two threads never run the same session at once, while
    different graphs may overlap."""
    active, overlaps = {"n": 0}, []

    class Probe(OnnxRuntimeBackend):
        def run_graph(self, graph, session, feeds):
            active["n"] += 1
            overlaps.append(active["n"])
            time.sleep(0.02)
            out = super().run_graph(graph, session, feeds)
            active["n"] -= 1
            return out

    be = Probe(bundle, _settings())
    ids = np.zeros((2, 77), np.int64)
    ids[:, 0], ids[:, 1] = 49406, 49407
    threads = [threading.Thread(target=be.encode_text, args=(ids,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1, 1, 1, 1]
    be.close()
    with pytest.raises(BackendError, match="closed"):
        be.encode_text(ids)


def test_threads_auto_and_explicit() -> None:
    assert (
        session_options(_settings()).intra_op_num_threads == available_cpus() <= len(os.sched_getaffinity(0))
    )
    assert session_options(_settings(cpus=1)).intra_op_num_threads == 1  # SAMCLIP_CPUS sizes the pool
    assert session_options(_settings(cpus=1, intra_op_threads=3)).intra_op_num_threads == 3
    opts = session_options(_settings(intra_op_threads=3, inter_op_threads=2))
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 2)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_unavailable_provider_falls_back_to_cpu(bundle) -> None:
    be = create_backend("onnxruntime", bundle, _settings(providers=["NoSuchExecutionProvider"]))
    assert be.info.details["providers"] == ["CPUExecutionProvider"] and be.info.device == "cpu"
    assert be.info.details["selection"]["reason"] == "asked for (SAMCLIP_BACKEND=onnxruntime)"
    assert not be.info.details["io_binding"]


def test_16bit_precision_is_refused_not_claimed(bundle) -> None:
    """No step writes fp16 ONNX variants, so the onnxruntime backend does not pretend to run one."""
    with pytest.raises(BackendError, match="not fp16.*tensorrt or torch"):
        create_backend("onnxruntime", bundle, _settings(precision="fp16"))


def test_corrupt_graph_raises_backend_error(bundle, tmp_path) -> None:
    broken = tmp_path / "b"
    shutil.copytree(bundle.path, broken)
    (broken / "clip_head.onnx").write_bytes(b"not an onnx file")
    fake = Bundle.load(broken, verify=False)  # sha256 check would catch it first; test the backend itself
    with pytest.raises(BackendError, match="clip_head"):
        OnnxRuntimeBackend(fake, _settings())
