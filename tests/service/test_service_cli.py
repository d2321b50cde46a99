"""`python -m service` command line: flag parsing, bundle resolution, the clear message when torch is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from samclip_bundle.manifest import Manifest
from service import __main__ as cli
from service.settings import DEFAULT_BUNDLE_DIR, Settings


def test_flags_override_settings() -> None:
    args = cli.build_parser().parse_args(["--bundle", "b", "--port", "9001", "--backend", "onnxruntime"])
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    s = Settings(**overrides)
    assert (s.bundle, s.port, s.backend, s.host) == (Path("b"), 9001, "onnxruntime", "127.0.0.1")


def test_explicit_bundle_is_used_as_given(tmp_path: Path) -> None:
    assert cli.ensure_bundle(Settings(bundle=tmp_path / "missing")) == tmp_path / "missing"


def test_existing_default_bundle_is_served(tmp_path: Path) -> None:
    Manifest.read(DEFAULT_BUNDLE_DIR).write(tmp_path)  # a bundle's manifest (its graphs need not be there)
    assert cli.ensure_bundle(Settings(default_bundle_dir=tmp_path)) == tmp_path


def test_missing_default_without_torch_exits_with_instructions(tmp_path: Path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(SystemExit) as exc:
        cli.ensure_bundle(Settings(default_bundle_dir=tmp_path / "default"))
    assert "pip install -e '.[export]'" in str(exc.value) and "--bundle" in str(exc.value)
    assert not (tmp_path / "default").exists()
