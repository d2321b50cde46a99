"""`python -m model_export`: round trip save -> export -> verify, and clear failures (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from model_export.build import build_model  # noqa: E402
from model_export.checkpoint import save_samclip  # noqa: E402
from model_export.cli import main  # noqa: E402
from samclip_bundle.manifest import Manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "model_export", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_list_models():
    result = cli("list-models")
    assert result.returncode == 0
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert {"tiny", "vit_b"} <= set(names)


def test_export_without_weights_fails_clearly(tmp_path):
    result = cli("export", "--model", "tiny", "--out", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "--random-init" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()


def test_round_trip_save_export_verify(tmp_path):
    ckpt = tmp_path / "tiny.safetensors"
    saved = cli("save", "--model", "tiny", "--random-init", "--seed", "3", "--out", str(ckpt))
    assert saved.returncode == 0, saved.stderr
    assert "RANDOM WEIGHTS" in saved.stderr
    assert json.loads(saved.stdout)["checkpoint"] == str(ckpt)

    bundle = tmp_path / "bundle"
    exported = cli("export", "--samclip-checkpoint", str(ckpt), "--out", str(bundle), "--no-progress")
    assert exported.returncode == 0, exported.stderr
    assert "RANDOM WEIGHTS" not in exported.stderr
    manifest = Manifest.read(bundle).to_dict()
    assert manifest["model"]["name"] == "tiny"
    assert manifest["weights"]["random_init"] is False and "warning" not in manifest["weights"]
    (source,) = manifest["weights"]["sources"]
    assert source["kind"] == "samclip" and source["path"] == str(ckpt.resolve())
    assert json.loads(exported.stdout)["fingerprint"] == manifest["fingerprint"]
    # export ran the CPU variant step by default and recorded it: the variant with its parity, or why not
    (run,) = Manifest.read(bundle).optimizations
    assert json.loads(exported.stdout)["optimize"]["target"] == run.target == "openvino-int8"
    if run.passed:
        assert run.kept and all(manifest["variants"][g][0]["parity"]["passed"] for g in run.kept)
    else:
        assert run.reason and not manifest.get("variants")

    verified = cli("verify", str(bundle), "--samples", "1")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["weights"]["sources"] == [source]


def _sam_state_dict(model) -> dict[str, torch.Tensor]:
    prefixes = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def test_truncated_checkpoint_fails_clearly(tmp_path, capsys):
    ckpt = save_samclip(build_model("tiny", seed=0), tmp_path / "t.safetensors")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert main(["export", "--samclip-checkpoint", str(ckpt), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(ckpt) in err and "Traceback" not in err


def test_samclip_checkpoint_for_other_model_fails_clearly(tmp_path, capsys):
    ckpt = save_samclip(build_model("tiny", seed=0), tmp_path / "t.safetensors")
    args = ["export", "--model", "vit_b", "--samclip-checkpoint", str(ckpt), "--out", str(tmp_path / "b")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "vit_b" in err and "encoder.embed_dim" in err


def test_sam_checkpoint_with_missing_and_misshapen_keys_fails_clearly(tmp_path, capsys):
    sd = _sam_state_dict(build_model("tiny", seed=0))
    del sd["mask_decoder.iou_token.weight"]
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 3)
    path = tmp_path / "sam.pth"
    torch.save(sd, path)
    args = [
        "export",
        "--model",
        "tiny",
        "--sam-checkpoint",
        str(path),
        "--random-init",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mask_decoder.iou_token.weight" in err and "prompt_encoder.no_mask_embed.weight" in err
    assert not (tmp_path / "b").exists()


def test_sam_checkpoint_loads_and_is_recorded(tmp_path):
    """A SAM checkpoint (official key layout) + random CLIP parts: provenance lists the file and random parts."""
    from model_export.sources import assemble_model

    donor = build_model("tiny", seed=5)
    path = tmp_path / "sam.pth"
    torch.save(_sam_state_dict(donor), path)
    model, _, provenance = assemble_model("tiny", sam=path, random_init=True, seed=1)
    assert torch.equal(model.mask_decoder.iou_token.weight, donor.mask_decoder.iou_token.weight)
    assert provenance["sources"][0]["kind"] == "sam" and provenance["random_init"] is True
    assert provenance["random_parts"] == ["clip_head", "text_encoder", "logit_scale"]


@pytest.mark.slow
def test_vit_b_random_init_export_and_verify(tmp_path):
    """Full-size bundle on CPU (minutes): export + verify through the CLI."""
    bundle = tmp_path / "vit_b"
    exported = cli("export", "--model", "vit_b", "--random-init", "--seed", "0", "--out", str(bundle),
                   "--no-progress", timeout=3600)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    verified = cli("verify", str(bundle), "--samples", "1", timeout=3600)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True


def test_export_no_optimize_writes_only_the_plain_graphs(tmp_path, capsys):
    bundle = tmp_path / "b"
    args = [
        "export",
        "--model",
        "tiny",
        "--random-init",
        "--out",
        str(bundle),
        "--no-progress",
        "--no-optimize",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["optimize"] is None
    manifest = Manifest.read(bundle)
    assert manifest.variants == {} and manifest.optimizations == []
    assert sorted(p.name for p in bundle.glob("*.onnx")) == [
        "clip_head.onnx", "encoder.onnx", "sam_decoder.onnx", "text_encoder.onnx",
    ]  # fmt: skip
