"""Shared fixtures: a small generated shapes dataset and random-weight teacher files (demo architecture)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    from training.data.shapes import write_sa1b

    return write_sa1b(tmp_path_factory.mktemp("shapes") / "sa", 12, seed=0)


@pytest.fixture(scope="session")
def teacher_files(tmp_path_factory) -> dict[str, Path]:
    """Random tiny OpenCLIP teacher (config JSON + safetensors) and a random SAM in the official layout."""
    import open_clip
    from safetensors.torch import save_file

    from model_export.build import build_model
    from model_export.checkpoint import SAM_PREFIXES
    from training.demo_clip import clip_model_config

    root = tmp_path_factory.mktemp("teachers")
    cfg = root / "demo-clip.json"
    cfg.write_text(json.dumps(clip_model_config("demo")))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    clip = open_clip.create_model("demo-clip")
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(root / "clip.safetensors"))
    sam = build_model("demo", seed=1)
    sd = {k: v.contiguous() for k, v in sam.state_dict().items() if k.startswith(SAM_PREFIXES)}
    save_file(sd, str(root / "sam.safetensors"))
    return {"clip_config": cfg, "clip": root / "clip.safetensors", "sam": root / "sam.safetensors"}


@pytest.fixture()
def test_config(shapes_data, teacher_files):
    """training/configs/test.json with the fixture paths filled in."""
    import dataclasses

    from training.config import load_train_config

    cfg = load_train_config("test")
    teacher = dataclasses.replace(
        cfg.teacher,
        sam_checkpoint=str(teacher_files["sam"]),
        clip_model_config=str(teacher_files["clip_config"]),
        clip_pretrained=str(teacher_files["clip"]),
    )
    return cfg.replace(teacher=teacher, clip_images=str(shapes_data), sam_data=str(shapes_data))
