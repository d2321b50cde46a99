"""The typed manifest: validation names the offending field, JSON round trip, artifacts and fingerprint,
format 1 refused with the upgrade command, and the package stays free of torch and the other packages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from samclip_bundle.hashing import fingerprint, sha256_file
from samclip_bundle.manifest import Manifest, ManifestError, OutdatedManifestError
from tests.samclip_bundle.bundle_fakes import synthetic_manifest


def _write_files(tmp_path: Path, manifest: Manifest) -> None:
    """Give every artifact real bytes and matching sha256s."""
    for name in manifest.artifact_hashes():
        (tmp_path / name).write_bytes(name.encode())
    for entry in manifest.graphs.values():
        entry.sha256 = sha256_file(tmp_path / entry.file)
    manifest.tokenizer.sha256 = sha256_file(tmp_path / manifest.tokenizer.file)
    manifest.refresh_fingerprint()


def test_attributes_mirror_the_json_keys_and_round_trip(tmp_path: Path) -> None:
    m = synthetic_manifest()
    assert (m.preprocess.image_size, m.embed_grid, m.clip_width) == (256, 16, 96)
    assert m.graphs["sam_decoder"].output_names == ("iou_predictions", "low_res_masks")
    assert (m.tokenizer.context_length, m.tokenizer.eot_token_id, m.clip.logit_scale) == (77, 49407, 100.0)
    path = m.write(tmp_path)
    on_disk = json.loads(path.read_text())
    assert on_disk["graphs"]["encoder"]["inputs"][0]["name"] == "image" and on_disk["format_version"] == 2
    assert Manifest.read(tmp_path) == m and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["graphs"]["encoder"].update(sha256="xyz"), "graphs.encoder.sha256"),
        (lambda d: d["graphs"].pop("clip_head"), "graphs: expected exactly"),
        (lambda d: d["graphs"]["sam_decoder"]["outputs"].pop(), "graphs.sam_decoder.outputs"),
        (lambda d: d["preprocess"].update(pixel_mean=[1, 2]), "preprocess.pixel_mean"),
        (lambda d: d["preprocess"].update(image_size=250), "preprocess.image_size"),
        (lambda d: d["graphs"]["encoder"].update(file="../../etc/passwd"), "graphs.encoder.file"),
        (lambda d: d.pop("fingerprint"), "fingerprint"),
        (lambda d: d.update(format_version=3), "format_version 3"),
        (lambda d: d["model"]["config"].pop("encoder"), "model.config.encoder.patch_size"),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_errors_name_the_field(edit, field: str) -> None:
    data = synthetic_manifest().to_dict()
    edit(data)
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        Manifest.from_dict(data, "B/manifest.json")


def test_format_1_is_refused_with_the_upgrade_command(tmp_path: Path) -> None:
    data = synthetic_manifest().to_dict()
    data["format_version"] = 1
    data["graphs"]["sam_decoder"]["outputs"].append(
        {"name": "masks", "shape": ["k", 4, 256, 256], "dtype": "float32"}
    )
    Manifest.path(tmp_path).write_text(json.dumps(data))
    with pytest.raises(OutdatedManifestError, match=f"python -m model_export upgrade {tmp_path}"):
        Manifest.read(tmp_path)
    legacy = Manifest.read(tmp_path, legacy=True)
    assert legacy.graphs["sam_decoder"].output_names[-1] == "masks"


def test_missing_dir_manifest_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        Manifest.read(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no manifest.json"):
        Manifest.read(tmp_path)
    Manifest.path(tmp_path).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.read(tmp_path)


def test_artifacts_and_fingerprint(tmp_path: Path) -> None:
    m = synthetic_manifest()
    _write_files(tmp_path, m)
    assert m.check_artifacts(tmp_path) == []
    assert m.fingerprint == fingerprint(m.artifact_hashes()) and len(m.artifact_hashes()) == 5
    (tmp_path / "encoder.onnx").write_bytes(b"changed")
    (tmp_path / "tokenizer.json").unlink()
    problems = m.check_artifacts(tmp_path)
    assert any("encoder.onnx: sha256" in p for p in problems) and any(
        "tokenizer.json: missing" in p for p in problems
    )
    m.fingerprint = "0" * 64
    assert "fingerprint does not match" in m.check_artifacts(tmp_path)[-1]


def test_package_imports_nothing_heavy() -> None:
    code = (
        "import sys, samclip_bundle, samclip_bundle.engines, samclip_bundle.variants, samclip_bundle.cuda_probe; "
        "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'service', 'model_export', 'training') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
