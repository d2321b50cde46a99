"""One variant-choice rule for every runtime (samclip_bundle.variants)."""

from __future__ import annotations

import pytest

from samclip_bundle.manifest import Parity, Variant
from samclip_bundle.variants import VariantError, choose_variant, passing_variants
from tests.samclip_bundle.bundle_fakes import SHA, synthetic_manifest


def _variant(name: str, graph: str, runtime: str, rank: int, passed: bool = True) -> Variant:
    return Variant(
        name=name, file=f"{graph}.{name}.onnx", sha256=SHA, runtimes=[runtime], precision="int8", rank=rank,
        parity=Parity(passed=passed),
    )  # fmt: skip


@pytest.fixture
def manifest():
    m = synthetic_manifest()
    for graph in ("encoder", "clip_head"):
        m.upsert_variant(graph, _variant("int8-qdq", graph, "openvino", 1))
        m.upsert_variant(graph, _variant("int8-qdq-attn", graph, "openvino", 0, passed=False))
    m.upsert_variant("encoder", _variant("int8-dynamic", "encoder", "onnxruntime", 1))
    return m


def test_auto_picks_the_best_passing_variant_for_the_runtime(manifest) -> None:
    choice = choose_variant(manifest, "openvino", "auto")
    assert choice.name == "int8-qdq" and sorted(choice.entries) == ["clip_head", "encoder"]
    assert choice.file(manifest, "encoder") == "encoder.int8-qdq.onnx"
    assert choice.file(manifest, "sam_decoder") == "sam_decoder.onnx"  # no variant: the plain graph
    assert "parity gates passed" in choice.reason
    assert choose_variant(manifest, "onnxruntime", None).name == "int8-dynamic"
    assert choose_variant(manifest, "tensorrt", "auto").name is None
    assert [v.name for v in passing_variants(manifest, "openvino")] == ["int8-qdq"]


def test_rank_orders_passing_variants(manifest) -> None:
    manifest.variants["encoder"][1].parity.passed = True  # int8-qdq-attn (rank 0) now passes
    assert choose_variant(manifest, "openvino").name == "int8-qdq-attn"


def test_none_and_explicit_names(manifest) -> None:
    none = choose_variant(manifest, "openvino", "none")
    assert none.name is None and none.entries == {}
    explicit = choose_variant(manifest, "onnxruntime", "int8-qdq")  # an explicit choice wins over runtime
    assert explicit.name == "int8-qdq" and "asked for by name" in explicit.reason
    with pytest.raises(VariantError, match="'fp16' is not in the bundle's manifest.*int8-dynamic"):
        choose_variant(manifest, "openvino", "fp16")
