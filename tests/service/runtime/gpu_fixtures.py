"""Shared helpers for the backend tests: a tiny random-init bundle and the fp32 ONNX Runtime reference.

`tiny_bundle_dir(request, tmp_path_factory)` uses the session fixture `tiny_bundle` (tests/conftest.py) when it
exists and otherwise exports one random-init tiny bundle (seed 0) for this test session.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from samclip_bundle.graphs import GRAPHS
from samclip_bundle.manifest import Manifest

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
        provenance = {"random_init": True, "seed": 0, "sources": []}
        export_bundle(build_model(cfg, seed=0), cfg, out, provenance, progress=False)
        _CACHE["tiny"] = out
    return _CACHE["tiny"]


def bundle_view(path: Path, manifest: Manifest | None = None) -> SimpleNamespace:
    """The attributes backends read from service.bundle.Bundle, over `manifest` (default: the bundle's own)."""
    manifest = manifest or Manifest.read(path)
    return SimpleNamespace(
        path=Path(path),
        manifest=manifest,
        image_size=manifest.preprocess.image_size,
        embed_grid=manifest.embed_grid,
        clip_width=manifest.clip_width,
    )


def reference(path: Path) -> Any:
    """fp32 ONNX Runtime CPU runner over the bundle's graphs (backend-shaped, model_export.onnx_graphs)."""
    from model_export.onnx_graphs import OnnxGraphs

    m = Manifest.read(path)
    return OnnxGraphs({g: Path(path) / m.graphs[g].file for g in GRAPHS})


def parity_inputs(path: Path, images: int = 2, prompts: int = 6, texts: int = 5) -> tuple:
    from samclip_bundle.parity import generated_images, random_prompts, random_text_ids

    m = Manifest.read(path)
    size = m.preprocess.image_size
    imgs = generated_images(images, size, list(m.preprocess.pixel_mean), list(m.preprocess.pixel_std))
    return imgs, random_prompts(prompts, size, m.embed_grid), random_text_ids(texts)
