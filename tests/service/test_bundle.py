"""Bundle.load: manifest validation (through samclip_bundle.Manifest) and sha256 of every artifact."""

from __future__ import annotations

import json
import shutil

import pytest

from samclip_bundle.manifest import Manifest
from service.bundle import Bundle, BundleError


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _edit(path, fn) -> None:
    """Apply `fn` to the manifest's JSON (bypassing validation, as a hand-edited file would)."""
    data = Manifest.read(path).to_dict()
    fn(data)
    Manifest.path(path).write_text(json.dumps(data))


def test_loads_real_bundle(tiny_bundle) -> None:
    b = Bundle.load(tiny_bundle)
    assert (b.model_name, b.image_size, b.embed_grid, b.context_length) == ("tiny", 256, 16, 77)
    assert b.random_init and len(b.pixel_mean) == 3 and b.fingerprint
    assert b.graph_path("encoder").is_file() and b.tokenizer_path.is_file()
    assert (b.clip_width, b.logit_scale) == (96, b.manifest.clip.logit_scale)
    assert b.manifest.graphs["sam_decoder"].output_names == ("iou_predictions", "low_res_masks")
    info = b.info()
    assert info["fingerprint"] == b.fingerprint and info["weights"]["random_init"] is True
    json.dumps(info)


def test_modified_artifact_fails_sha256(copy) -> None:
    with (copy / "sam_decoder.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sam_decoder.onnx.*sha256|sha256.*sam_decoder"):
        Bundle.load(copy)


def test_missing_artifact(copy) -> None:
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json.*missing"):
        Bundle.load(copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=3), "format_version 3"),
        (lambda m: m.update(format_version=1), "python -m model_export upgrade"),
        (lambda m: m["graphs"].pop("clip_head"), "clip_head"),
        (lambda m: m["preprocess"].update(pixel_mean=[1, 2]), "pixel_mean"),
        (lambda m: m["preprocess"].update(image_size=250), "multiple"),
        (lambda m: m["graphs"]["encoder"].update(file="../../etc/passwd"), "graphs.encoder.file"),
        (lambda m: m.pop("fingerprint"), "fingerprint"),
    ],
)
def test_bad_manifests(copy, edit, message: str) -> None:
    _edit(copy, edit)
    with pytest.raises(BundleError, match=message):
        Bundle.load(copy)


def test_not_a_bundle(tmp_path) -> None:
    with pytest.raises(BundleError, match="bundle path /nonexistent does not exist"):
        Bundle.load("/nonexistent")
    with pytest.raises(BundleError, match="manifest.json"):
        Bundle.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)
