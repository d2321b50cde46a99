"""Architecture configs: parsing, validation with clear errors, derived sizes, torch-free import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model_export.config import ConfigError, SamClipConfig, list_models, load_config


def test_bundled_configs_listed_and_valid():
    names = list_models()
    assert {"tiny", "vit_b"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        assert SamClipConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_vit_b_is_the_papers_architecture():
    cfg = load_config("vit_b")
    e = cfg.encoder
    assert (e.depth, e.embed_dim, e.num_heads, e.patch_size, e.window_size) == (12, 768, 12, 16, 14)
    assert e.global_attn_indexes == (2, 5, 8, 11) and e.out_chans == 256
    assert cfg.embed_grid == 64 and cfg.mask_input_size == 256
    assert cfg.clip_head.depth == 3 and cfg.clip_head.embed_dim == cfg.text.embed_dim == 768
    assert (cfg.text.width, cfg.text.layers, cfg.text.heads, cfg.text.context_length) == (768, 12, 12, 77)


def test_tiny_derived_sizes():
    cfg = load_config("tiny")
    assert cfg.embed_grid == cfg.image_size // cfg.encoder.patch_size == 16
    assert cfg.mask_input_size == 64


def test_clip_head_input_sets_its_width():
    assert load_config("vit_b").clip_head.input == "blocks" and load_config("vit_b").clip_width == 768
    data = _tiny_dict()
    data["clip_head"].update(input="neck", num_heads=2)  # heads must divide the neck width (64)
    cfg = SamClipConfig.from_dict(data)
    assert cfg.clip_width == cfg.encoder.out_chans == 64 != cfg.encoder.embed_dim
    assert load_config("demo").clip_head.input == "neck"


def test_load_by_path_and_unknown_name(tmp_path):
    data = load_config("tiny").to_dict()
    data["name"] = "custom"
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    assert load_config(path).name == "custom"
    assert load_config(str(path)).architecture_dict() == load_config("tiny").architecture_dict()
    with pytest.raises(ConfigError, match=r"unknown model 'vit_z'.*tiny"):
        load_config("vit_z")


def _tiny_dict() -> dict:
    return load_config("tiny").to_dict()


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (
            lambda d: d["clip_head"].update(embed_dim=32),
            r"clip_head\.embed_dim \(32\) must equal text\.embed_dim",
        ),
        (lambda d: d.update(image_size=250), r"image_size \(250\) must be divisible by 16"),
        (lambda d: d["encoder"].update(bogus=1), r"encoder: unknown field\(s\) \['bogus'\]"),
        (lambda d: d["text"].pop("width"), r"text: missing field\(s\) \['width'\]"),
        (lambda d: d["encoder"].update(depth=2.5), r"encoder\.depth must be an integer"),
        (lambda d: d["encoder"].update(num_heads=5), r"embed_dim \(96\) must be divisible by 5"),
        (lambda d: d["encoder"].update(global_attn_indexes=[7]), r"global_attn_indexes \[7\] out of range"),
        (lambda d: d["encoder"].update(use_rel_pos="yes"), r"use_rel_pos must be true/false"),
        (lambda d: d["mask_decoder"].update(iou_head_depth=0), r"iou_head_depth must be a positive number"),
        (lambda d: d.update(pixel_std=[1.0, 2.0]), r"pixel_std must have 3 values"),
        (lambda d: d.pop("text"), r"config: missing field\(s\) \['text'\]"),
        (
            lambda d: d["clip_head"].update(input="pixels"),
            r"clip_head\.input must be one of \('blocks', 'neck'\)",
        ),
    ],
)
def test_invalid_configs_raise_clear_errors(mutate, pattern):
    data = _tiny_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=pattern):
        SamClipConfig.from_dict(data)


def test_invalid_json_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(path)


def test_config_and_tokenizer_import_without_torch():
    code = (
        "import sys, model_export, model_export.config, model_export.tokenizer; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
