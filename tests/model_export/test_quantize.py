"""`python -m model_export optimize`: reduced-precision variants, their manifest records and parity figures.

Parity is measured against the plain fp32 graphs in ONNX Runtime on the random-init `tiny` bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")

from model_export import quantize  # noqa: E402
from model_export.onnx_graphs import OnnxGraphs  # noqa: E402
from samclip_bundle.manifest import Manifest  # noqa: E402
from samclip_bundle.parity import (  # noqa: E402
    GATES,
    cosine_rows,
    mask_iou,
    random_prompts,
    random_text_ids,
    text_segment_masks,
)


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of tiny with the openvino-int8 variant written through the CLI; (path, printed summary)."""
    pytest.importorskip("openvino")
    from model_export.cli import main

    out = tmp_path_factory.mktemp("q") / "tiny"
    shutil.copytree(tiny_bundle, out)
    return out, {"status": main(["optimize", str(out), "--target", "openvino-int8", "--calib-samples", "2"])}


def test_weight_matmuls_splits_linear_from_attention(tiny_bundle: Path) -> None:
    weighted, other = quantize.weight_matmuls(tiny_bundle / "encoder.onnx")
    cfg = Manifest.read(tiny_bundle).model.config["encoder"]
    # per block: qkv, proj, mlp fc1, fc2 have weights; q@k^T and attn@v (and rel-pos einsums) do not
    assert len(weighted) >= 4 * cfg["depth"]
    assert len(other) >= 2 * cfg["depth"]
    assert not set(weighted) & set(other)


def test_optimize_openvino_int8_records_passing_variants(int8_bundle: tuple[Path, dict]) -> None:
    bundle, summary = int8_bundle
    assert summary["status"] == 0
    manifest = Manifest.read(bundle)
    assert manifest.check_artifacts(bundle) == []  # sha256 of the new files and the fingerprint are updated
    entries = [e for v in manifest.variants.values() for e in v if e.name == "int8-qdq"]
    assert entries, "no graph kept its int8 variant"
    for entry in entries:
        assert (bundle / entry.file).is_file() and entry.file.endswith(".int8.qdq.onnx")
        assert entry.runtimes == ["openvino"] and entry.quantized_nodes > 0
        parity = entry.parity.model_dump()
        assert parity["passed"] is True
        assert all(parity[k] >= v for k, v in GATES.items())
    # the plain fp32 graphs are untouched and still listed; the run itself is recorded
    assert manifest.graphs["encoder"].file == "encoder.onnx"
    (run,) = manifest.optimizations
    assert (run.target, run.variant, run.passed, run.reason) == ("openvino-int8", "int8-qdq", True, None)
    assert sorted(run.kept) == sorted(e.file.split(".")[0] for e in entries)


def test_int8_graph_has_quantize_nodes_and_stays_close(int8_bundle: tuple[Path, dict]) -> None:
    import onnx

    bundle, _ = int8_bundle
    manifest = Manifest.read(bundle)
    entry = next(e for e in manifest.variants.get("encoder", []) if e.name == "int8-qdq")
    ops = {n.op_type for n in onnx.load(str(bundle / entry.file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    ref = OnnxGraphs({"encoder": bundle / "encoder.onnx"})
    fast = OnnxGraphs({"encoder": bundle / entry.file}, runtime="openvino", precision="bf16")
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    cos = cosine_rows(ref.encode(x).image_embeddings, fast.encode(x).image_embeddings)
    assert cos[0] > 0.999


def test_int8_layers_keep_float_outputs_on_flat_tokens(
    int8_bundle: tuple[Path, dict], tmp_path: Path
) -> None:
    """The encoder's linear layers read 3-D tokens (B, h*w, C), so its int8 variant quantizes their inputs and
    weights only: no QuantizeLinear reads a quantized MatMul's output. A layer reading a 4-D tensor (the
    older (B, h, w, C) export) keeps int8 outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bundle, _ = int8_bundle
    weighted, _ = quantize.weight_matmuls(bundle / "encoder.onnx")
    assert quantize.quantize_outputs(bundle / "encoder.onnx", weighted) is False
    entry = next(e for e in Manifest.read(bundle).variants["encoder"] if e.name == "int8-qdq")
    graph = onnx.load(str(bundle / entry.file)).graph
    matmul_out = {o for n in graph.node if n.op_type == "MatMul" for o in n.output}
    quantized_in = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    assert not matmul_out & quantized_in
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    four_d = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 4])], [w],
        )
    )  # fmt: skip
    onnx.save(four_d, tmp_path / "four_d.onnx")
    assert quantize.quantize_outputs(tmp_path / "four_d.onnx", ["fc"]) is True


def test_optimize_ort_int8_and_openvino_bf16(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    summary = quantize.optimize(bundle, "ort-int8", graphs=("encoder",), parity_samples=1)
    assert summary["kept"] == ["encoder"]
    assert (bundle / "encoder.int8.onnx").stat().st_size < 0.5 * (bundle / "encoder.onnx").stat().st_size
    bf16 = quantize.optimize(bundle, "openvino-bf16", graphs=("encoder", "sam_decoder"), parity_samples=1)
    assert bf16["parity"]["passed"] and bf16["files"] == {}
    manifest = Manifest.read(bundle)
    names = {e.name for e in manifest.variants["encoder"]}
    assert names == {"int8-dynamic", "bf16"}
    assert manifest.variants["sam_decoder"][0].file == "sam_decoder.onnx"
    assert manifest.check_artifacts(bundle) == []


def test_select_graphs_drops_the_graph_that_breaks_parity() -> None:
    """Greedy selection: all pass -> all kept; one fails alone -> dropped, the rest re-checked together."""

    class Probe:
        def __init__(self, bad: set[str]) -> None:
            self.bad = bad

        def report(self, fast: tuple[str, ...]) -> dict:
            ok = not (set(fast) & self.bad)
            return {"passed": ok, "text_segment_iou": 1.0 if ok else 0.5, "decoder_mask_iou": 1.0}

    graphs = ("encoder", "clip_head", "text_encoder")
    kept, joint, alone = quantize.select_graphs(Probe(set()), lambda g: g, graphs)
    assert kept == graphs and joint["passed"] and alone == {}
    kept, joint, alone = quantize.select_graphs(Probe({"clip_head"}), lambda g: g, graphs)
    assert kept == ("encoder", "text_encoder") and joint["passed"]
    assert alone["clip_head"]["passed"] is False
    kept, _, _ = quantize.select_graphs(Probe(set(graphs)), lambda g: g, graphs)
    assert kept == ()


def test_failed_variant_is_not_listed(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an impossible gate nothing is kept: no variant entry, no stray file, exit status 1, and the
    manifest records the run and why nothing was kept."""
    from model_export.cli import main
    from samclip_bundle import parity

    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    monkeypatch.setitem(parity.GATES, "clip_image_cosine", 1.01)
    status = main(
        ["optimize", str(bundle), "--target", "ort-int8", "--graphs", "encoder", "--parity-samples", "1"]
    )
    assert status == 1
    assert not (bundle / "encoder.int8.onnx").exists()
    manifest = Manifest.read(bundle)
    assert not manifest.variants.get("encoder")
    (run,) = manifest.optimizations
    assert run.passed is False and run.kept == [] and "clip_image_cosine" in run.reason


def test_optimize_rejects_unknown_graph(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_export.cli import main

    assert main(["optimize", str(tiny_bundle), "--graphs", "nope"]) == 2
    assert "unknown graph" in capsys.readouterr().out


def test_parity_metrics() -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    x = np.random.default_rng(0).standard_normal((3, 5))
    assert np.allclose(cosine_rows(x, 2 * x), 1.0) and np.allclose(cosine_rows(x, -x), -1.0)
    patches = np.zeros((2, 2, 3))
    patches[0, :, 0] = 1
    patches[1, :, 2] = 1
    texts = np.eye(3)  # text 0, text 1, background = axis 2
    masks = text_segment_masks(patches, texts, n_background=1)
    assert masks.shape == (2, 2, 2) and masks[0, 0].all() and not masks[0, 1].any() and not masks[1].any()
    patches[1, 1] = [0.1, 0.9, 0.2]  # text 1 beats the background there (text 0 would win overall)
    patches[1, 1, 0] = 1.0
    assert text_segment_masks(patches, texts, n_background=1)[1, 1, 1]


def test_random_prompts_follow_the_bundle_layout() -> None:
    p = random_prompts(6, 256, 16, seed=1)
    k, n, _ = p["point_coords"].shape
    assert k == 6 and p["point_labels"].shape == (6, n) and p["mask_input"].shape == (6, 1, 64, 64)
    assert set(np.unique(p["point_labels"])) <= {-1.0, 0.0, 1.0, 2.0, 3.0}
    assert p["has_mask_input"].sum() == 2
    ids = random_text_ids(3)
    assert ids.shape == (3, 77) and (ids.argmax(axis=1) > 0).all()
    assert json.dumps(p["point_coords"].tolist())  # plain floats
