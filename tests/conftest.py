"""Shared session fixtures.

torch is imported inside the fixtures only, so test modules that must run without torch still collect;
a test that requests one of these fixtures where torch is missing is skipped with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    """SamClip 'tiny' with random weights (seed 0), eval mode. Shared: do not modify its weights."""
    pytest.importorskip("torch", reason="needs the export extra (torch)")
    from model_export.build import build_model

    return build_model("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a random-init (seed 0) 'tiny' bundle exported once per session (read-only: copy to modify)."""
    pytest.importorskip("torch", reason="needs the export extra (torch) to export the tiny bundle")
    from model_export.build import build_model
    from model_export.config import load_config
    from model_export.export_onnx import export_bundle

    out = tmp_path_factory.mktemp("tiny_bundle")
    provenance = {"random_init": True, "seed": 0, "sources": []}
    export_bundle(build_model("tiny", seed=0), load_config("tiny"), out, provenance, progress=False)
    return out


@pytest.fixture(scope="session")
def fused_tiny(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with its fused decoder variant (model_export/decoder_variant.py); read-only."""
    from model_export.decoder_variant import add_decoder_variant

    out = tmp_path_factory.mktemp("fused_tiny") / "bundle"
    shutil.copytree(tiny_bundle, out)
    add_decoder_variant(out)
    return out
