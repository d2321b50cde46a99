"""Fixture for the Locust smoke tests: a tiny bundle (the shared `tiny_bundle` when it exists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.run import export_tiny_bundle


@pytest.fixture(scope="session")
def smoke_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return Path(request.getfixturevalue("tiny_bundle"))
    except pytest.FixtureLookupError:
        pass
    pytest.importorskip("torch", reason="exporting a tiny bundle needs the export extra (torch)")
    return export_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))
