"""`python -m model_export upgrade`: a format-1 bundle (decoder with the upscaled `masks` output) migrated in
place to format 2, after which the service loads it and the decoder gives the same results."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from model_export.cli import main  # noqa: E402
from samclip_bundle.hashing import sha256_file  # noqa: E402
from samclip_bundle.manifest import Manifest, TensorSpec  # noqa: E402
from samclip_bundle.parity import random_prompts  # noqa: E402
from service.bundle import Bundle, BundleError  # noqa: E402


def make_format_1(src: Path, dst: Path) -> None:
    """A copy of the format-2 bundle `src` as format 1 wrote it: the decoder also outputs `masks`,
    low_res_masks resized bilinearly to S x S, and the manifest says format_version 1."""
    from onnx import TensorProto, helper, numpy_helper

    shutil.copytree(src, dst)
    manifest = Manifest.read(dst)
    size = manifest.preprocess.image_size
    model = onnx.load(str(dst / "sam_decoder.onnx"))
    g = model.graph
    sizes = np.array([0, 0, size, size], np.int64)  # (K, 4) taken from low_res_masks, then S x S
    g.initializer.extend(
        [
            numpy_helper.from_array(sizes, "legacy_sizes"),
            numpy_helper.from_array(np.array([], np.float32), "legacy_roi"),
        ]
    )
    g.node.extend([
        helper.make_node("Shape", ["low_res_masks"], ["legacy_kc"], end=2),
        helper.make_node("Slice", ["legacy_sizes", "legacy_two", "legacy_four"], ["legacy_ss"]),
        helper.make_node("Concat", ["legacy_kc", "legacy_ss"], ["legacy_out"], axis=0),
        helper.make_node("Resize", ["low_res_masks", "legacy_roi", "", "legacy_out"], ["masks"], mode="linear"),
    ])  # fmt: skip
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([v], np.int64), n)
            for n, v in (("legacy_two", 2), ("legacy_four", 4))
        ]
    )
    g.output.append(helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["num_prompts", 4, size, size]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst / "sam_decoder.onnx"))
    data = manifest.to_dict()
    data["format_version"] = 1
    data["graphs"]["sam_decoder"]["sha256"] = sha256_file(dst / "sam_decoder.onnx")
    data["graphs"]["sam_decoder"]["outputs"].append(
        {"name": "masks", "shape": ["num_prompts", 4, size, size], "dtype": "float32"}
    )
    legacy = Manifest.from_dict(data, legacy=True)
    legacy.refresh_fingerprint()
    legacy.write(dst)


def test_upgrade_migrates_a_format_1_bundle_in_place(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "v1"
    make_format_1(tiny_bundle, bundle)
    session = ort.InferenceSession(str(bundle / "sam_decoder.onnx"))
    assert [o.name for o in session.get_outputs()] == ["iou_predictions", "low_res_masks", "masks"]
    prompts = random_prompts(3, 256, 16, seed=0)
    feeds = {
        "image_embeddings": np.random.default_rng(0).normal(size=(1, 64, 16, 16)).astype(np.float32),
        **prompts,
    }
    iou, low, masks = session.run(None, feeds)
    assert masks.shape == (3, 4, 256, 256)
    with pytest.raises(BundleError, match=f"python -m model_export upgrade {bundle}"):
        Bundle.load(bundle)

    assert main(["upgrade", str(bundle)]) == 0
    assert "sam_decoder.onnx" in capsys.readouterr().out
    loaded = Bundle.load(bundle)  # sha256 of the rewritten file and the fingerprint hold
    assert loaded.manifest.format_version == 2
    assert loaded.manifest.graphs["sam_decoder"].outputs == [
        TensorSpec(name="iou_predictions", shape=["num_prompts", 4], dtype="float32"),
        TensorSpec(name="low_res_masks", shape=["num_prompts", 4, 64, 64], dtype="float32"),
    ]
    pruned = ort.InferenceSession(str(bundle / "sam_decoder.onnx"))
    assert [o.name for o in pruned.get_outputs()] == ["iou_predictions", "low_res_masks"]
    new_iou, new_low = pruned.run(None, feeds)
    np.testing.assert_array_equal(new_iou, iou)
    np.testing.assert_array_equal(new_low, low)
    assert not any("masks" in n.output for n in onnx.load(str(bundle / "sam_decoder.onnx")).graph.node)

    fingerprint = loaded.fingerprint
    assert main(["upgrade", str(bundle)]) == 0  # format 2 already: nothing changes
    assert Bundle.load(bundle).fingerprint == fingerprint
