"""Checkpoint loaders and the SAM-CLIP safetensors format: strictness and clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from model_export.build import build_model
from model_export.checkpoint import (
    CheckpointError,
    load_open_clip_checkpoint,
    load_sam_checkpoint,
    load_samclip,
    read_samclip_metadata,
    save_samclip,
)
from samclip_bundle.hashing import sha256_file

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def sam_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(SAM_PREFIXES)}


def open_clip_state(model, visual_seed: int) -> dict[str, torch.Tensor]:
    """An open_clip CLIP-layout state dict for ``model``'s text tower plus a random image tower."""
    gen = torch.Generator().manual_seed(visual_seed)
    sd = {
        k[len("text_encoder.") :]: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith("text_encoder.")
    }
    sd["logit_scale"] = torch.tensor(4.0)
    sd["logit_bias"] = torch.tensor(-10.0)
    sd["attn_mask"] = torch.zeros(77, 77)
    sd["visual.conv1.weight"] = torch.randn(32, 3, 8, 8, generator=gen)
    sd["visual.proj"] = torch.randn(32, 64, generator=gen)
    return sd


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", seed=0)


def test_samclip_round_trip_identical(tmp_path, tiny):
    path = save_samclip(tiny, tmp_path / "m.safetensors", extra_metadata={"sources": [{"kind": "sam"}]})
    loaded, meta = load_samclip(path, config="tiny")
    assert meta["config"] == tiny.config.to_dict() and meta["extra"] == {"sources": [{"kind": "sam"}]}
    assert meta["sha256"] == sha256_file(path) and len(meta["sha256"]) == 64
    assert loaded.config == tiny.config and not loaded.training
    a, b = tiny.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert read_samclip_metadata(path)["format_version"] == 1


def test_samclip_config_mismatch_names_fields(tmp_path, tiny):
    path = save_samclip(tiny, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"encoder\.embed_dim: checkpoint 96 vs requested 64"):
        load_samclip(path, config="demo")


def test_truncated_files_raise(tmp_path, tiny):
    path = save_samclip(tiny, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_samclip(tmp_path / "cut.safetensors")
    pth = tmp_path / "sam.pth"
    torch.save(sam_state(tiny), pth)
    (tmp_path / "cut.pth").write_bytes(pth.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_sam_checkpoint(build_model("tiny"), tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_sam_checkpoint(tiny, tmp_path / "absent.pth")


def test_samclip_missing_tensor_names_key(tmp_path, tiny):
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if k != "clip_head.proj.weight"}
    metadata = {"format": "samclip", "format_version": "1", "config": tiny.config.to_json(), "extra": "{}"}
    save_file(sd, str(tmp_path / "m.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): clip_head\.proj\.weight"):
        load_samclip(tmp_path / "m.safetensors")
    save_file(sd, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a SAM-CLIP checkpoint"):
        load_samclip(tmp_path / "plain.safetensors")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_sam_checkpoint_loads_strictly(tmp_path, tiny, suffix):
    source = build_model("tiny", seed=1)
    path = tmp_path / f"sam{suffix}"
    sd = sam_state(source)
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, str(path))
    target = build_model("tiny", seed=2)
    text_before = target.text_encoder.text_projection.clone()
    info = load_sam_checkpoint(target, path)
    assert info["kind"] == "sam" and info["sha256"] == sha256_file(path)
    got = target.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert torch.equal(target.text_encoder.text_projection, text_before)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        ("missing", r"missing 1 key\(s\): mask_decoder\.iou_token\.weight"),
        ("unexpected", r"unexpected 1 key\(s\): image_encoder\.extra_thing"),
        (
            "shape",
            r"shape mismatch in 1 key\(s\): prompt_encoder\.no_mask_embed\.weight \(checkpoint \(1, 32\)",
        ),
    ],
)
def test_sam_checkpoint_errors_name_keys_and_change_nothing(tmp_path, edit, pattern):
    sd = sam_state(build_model("tiny", seed=1))
    if edit == "missing":
        del sd["mask_decoder.iou_token.weight"]
    elif edit == "unexpected":
        sd["image_encoder.extra_thing"] = torch.zeros(3)
    else:
        sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 32)
    torch.save(sd, tmp_path / "bad.pth")
    target = build_model("tiny", seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=pattern):
        load_sam_checkpoint(target, tmp_path / "bad.pth")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_sam_checkpoint_for_other_architecture_is_explained(tmp_path):
    """A checkpoint of a different size (here the 'demo' config) names the architecture and the keys."""
    torch.save(sam_state(build_model("demo", seed=0)), tmp_path / "demo_sam.pth")
    with pytest.raises(CheckpointError) as err:
        load_sam_checkpoint(build_model("tiny"), tmp_path / "demo_sam.pth")
    msg = str(err.value)
    assert "does not fit config 'tiny'" in msg and "embed_dim=64 (config 96)" in msg
    assert "patch_size=8 (config 16)" in msg and "image_size=128 (config 256)" in msg
    assert (
        "shape mismatch in" in msg and "image_encoder.blocks.0.attn.qkv.weight (checkpoint (192, 64)" in msg
    )


@pytest.mark.slow
def test_vit_b_sam_checkpoint_into_tiny_is_explained(tmp_path):
    with torch.device("meta"):
        shapes = sam_state(build_model("vit_b"))
    torch.save({k: torch.zeros(v.shape) for k, v in shapes.items()}, tmp_path / "vit_b.pth")
    with pytest.raises(CheckpointError, match=r"does not fit config 'tiny'.*embed_dim=768 \(config 96\)"):
        load_sam_checkpoint(build_model("tiny"), tmp_path / "vit_b.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("pickle payload executed",))


def test_pickled_objects_are_refused(tmp_path, tiny, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": sam_state(tiny), "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_sam_checkpoint(build_model("tiny"), path)
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(_Evil(), fh)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_sam_checkpoint(build_model("tiny"), tmp_path / "evil.pkl")
    assert "pickle payload executed" not in capsys.readouterr().out


def test_open_clip_image_tower_ignored_and_nesting_accepted(tmp_path):
    source = build_model("tiny", seed=1)
    torch.save(open_clip_state(source, visual_seed=1), tmp_path / "a.pt")
    nested = {"state_dict": {f"module.{k}": v for k, v in open_clip_state(source, visual_seed=2).items()}}
    torch.save(nested, tmp_path / "b.pt")
    results = []
    for name in ("a.pt", "b.pt"):
        target = build_model("tiny", seed=2)
        info = load_open_clip_checkpoint(target, tmp_path / name)
        assert info["kind"] == "open_clip"
        results.append(target.state_dict())
    want = source.state_dict()
    for sd in results:
        for k, v in sd.items():
            if k.startswith("text_encoder."):
                assert torch.equal(v, want[k])
        assert sd["logit_scale"].item() == 4.0
        assert torch.equal(sd["image_encoder.pos_embed"], build_model("tiny", seed=2).image_encoder.pos_embed)


def test_open_clip_custom_text_layout(tmp_path):
    source = build_model("tiny", seed=1)
    sd = {
        (k if k.startswith(("visual.", "logit_")) else f"text.{k}"): v
        for k, v in open_clip_state(source, 1).items()
    }
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "c.safetensors"))
    target = build_model("tiny", seed=2)
    load_open_clip_checkpoint(target, tmp_path / "c.safetensors")
    assert torch.equal(target.text_encoder.token_embedding.weight, source.text_encoder.token_embedding.weight)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        ("missing", r"missing 1 key\(s\): text_encoder\.ln_final\.weight"),
        ("unexpected", r"unexpected 1 key\(s\): text_cls_token"),
        ("shape", r"shape mismatch in 1 key\(s\): text_encoder\.positional_embedding"),
        ("no_scale", r"missing 1 key\(s\): logit_scale"),
    ],
)
def test_open_clip_errors_name_keys(tmp_path, edit, pattern):
    sd = open_clip_state(build_model("tiny", seed=1), 1)
    if edit == "missing":
        del sd["ln_final.weight"]
    elif edit == "unexpected":
        sd["text_cls_token"] = torch.zeros(64)
    elif edit == "shape":
        sd["positional_embedding"] = torch.zeros(76, 64)
    else:
        del sd["logit_scale"]
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=pattern):
        load_open_clip_checkpoint(build_model("tiny"), tmp_path / "bad.pt")
