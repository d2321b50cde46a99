"""Shared helpers for the GPU-backend tests: a tiny random-init bundle and the fp32 ONNX Runtime reference.

`tiny_bundle_dir(request, tmp_path_factory)` uses the session fixture `tiny_bundle` (tests/conftest.py) when it
exists and otherwise exports one random-init tiny bundle (seed 0) for this test session.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

_CACHE: dict[str, Path] = {}


def tiny_bundle_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return Path(request.getfixturevalue("tiny_bundle"))
    except pytest.FixtureLookupError:
        pass
    if "tiny" not in _CACHE:
        from model_export.build import build_model
        from model_export.config import load_config
        from model_export.export_onnx import export_bundle

        out = tmp_path_factory.mktemp("gpu_tiny_bundle")
        cfg = load_config("tiny")
        export_bundle(
            build_model(cfg, seed=0),
            cfg,
            out,
            {"random_init": True, "seed": 0, "sources": []},
            progress=False,
        )
        _CACHE["tiny"] = out
    return _CACHE["tiny"]


def bundle_view(path: Path, manifest: dict[str, Any] | None = None) -> SimpleNamespace:
    """The two attributes backends read from service.bundle.Bundle (path, manifest)."""
    return SimpleNamespace(
        path=Path(path), manifest=manifest or json.loads((Path(path) / "manifest.json").read_text())
    )


def reference(path: Path) -> Any:
    """fp32 ONNX Runtime CPU runner over the bundle's graphs (backend-shaped, model_export.parity)."""
    from model_export.parity import OnnxGraphs

    m = json.loads((Path(path) / "manifest.json").read_text())
    return OnnxGraphs({g: Path(path) / m["graphs"][g]["file"] for g in m["graphs"]})


def parity_inputs(path: Path, images: int = 2, prompts: int = 6, texts: int = 5) -> tuple:
    from model_export.parity import generated_images, random_prompts, random_text_ids

    m = json.loads((Path(path) / "manifest.json").read_text())
    size = m["preprocess"]["image_size"]
    grid = size // m["model"]["config"]["encoder"]["patch_size"]
    imgs = generated_images(images, size, m["preprocess"]["pixel_mean"], m["preprocess"]["pixel_std"])
    return imgs, random_prompts(prompts, size, grid), random_text_ids(texts)
