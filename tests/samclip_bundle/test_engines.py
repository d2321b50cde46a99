"""TensorRT engine records (samclip_bundle.engines): names, compatibility, selection and upsert; pure Python."""

from __future__ import annotations

import pytest

from samclip_bundle.engines import (
    EngineMismatch,
    engine_filename,
    record_mismatch,
    select_engines,
    upsert_engine_records,
)
from samclip_bundle.graphs import GRAPHS
from samclip_bundle.manifest import EngineRecord
from tests.samclip_bundle.bundle_fakes import SHA, synthetic_manifest


def test_engine_names() -> None:
    assert engine_filename("encoder", (9, 0), "10.3.0", "fp16") == "encoder.sm90.trt10.3.0.fp16.engine"
    assert (
        engine_filename("sam_decoder", [8, 6], "10.0.1.6", "fp32")
        == "sam_decoder.sm86.trt10.0.1.6.fp32.engine"
    )
    for bad in (("decoder", (9, 0), "10.3.0", "fp16"), ("encoder", (9, 0), "10.3.0", "int8")):
        with pytest.raises(ValueError):
            engine_filename(*bad)
    with pytest.raises(ValueError):
        engine_filename("encoder", (9, 0), "../x", "fp16")


def rec(graph: str, cc=(9, 0), trt="10.3.0", precision="fp16", sha256=SHA) -> EngineRecord:
    return EngineRecord(
        graph=graph, file=engine_filename(graph, cc, trt, precision), sha256=sha256, compute_capability=cc,
        tensorrt=trt, precision=precision, device_name="GPU",
    )  # fmt: skip


def test_record_compatibility_and_selection() -> None:
    assert record_mismatch(rec("encoder"), (9, 0), "10.3.0") is None
    assert "compute capability 8.9" in record_mismatch(rec("encoder", cc=(8, 9)), (9, 0), "10.3.0")
    assert "TensorRT 10.2.0" in record_mismatch(rec("encoder", trt="10.2.0"), (9, 0), "10.3.0")
    manifest = synthetic_manifest()
    manifest.engines = [rec(g, cc=(8, 6)) for g in GRAPHS] + [rec(g) for g in GRAPHS]
    chosen = select_engines(manifest, "fp16", (9, 0), "10.3.0")
    assert {r.file for r in chosen.values()} == {f"{g}.sm90.trt10.3.0.fp16.engine" for g in GRAPHS}
    manifest.engines = [rec(g, cc=(8, 6)) for g in GRAPHS]
    with pytest.raises(EngineMismatch, match="sam_decoder.sm86.trt10.3.0.fp16.engine"):
        select_engines(manifest, "fp16", (9, 0), "10.3.0")
    manifest.engines = [rec(g) for g in GRAPHS[:3]]
    with pytest.raises(EngineMismatch, match="for sam_decoder — no engine recorded"):
        select_engines(manifest, "fp16", (9, 0), "10.3.0")
    with pytest.raises(EngineMismatch, match=r"no fp32 TensorRT engines \(has: fp16\)"):
        select_engines(manifest, "fp32", (9, 0), "10.3.0")


def test_upsert_keeps_other_gpus_and_replaces_same_key() -> None:
    manifest = synthetic_manifest()
    manifest.engines = [rec("encoder", cc=(8, 6)), rec("encoder", sha256="1" * 64)]
    upsert_engine_records(manifest, [rec("encoder", sha256="2" * 64), rec("clip_head")])
    assert len(manifest.engines) == 3
    sm90 = [r for r in manifest.engines if r.graph == "encoder" and r.compute_capability == (9, 0)]
    assert [r.sha256 for r in sm90] == ["2" * 64]
