"""The chart's init-container script (deploy/helm/samclip/files/fetch_bundle.py) against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "samclip" / "files" / "fetch_bundle.py"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, directory it serves)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def make_archive(path: Path, members: dict[str, bytes], top: str = "", symlink: str | None = None) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(f"{top}link")
            info.type, info.linkname = tarfile.SYMTYPE, symlink
            archive.addfile(info)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(url: str, dest: Path, sha256: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUNDLE_URL": url, "BUNDLE_DEST": str(dest), "BUNDLE_SHA256": sha256}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


BUNDLE = {"manifest.json": b'{"format_version": 1}', "encoder.onnx": b"\x08\x07" * 1000}


@pytest.mark.parametrize("top", ["", "vit_b-bundle/"])
def test_downloads_checks_and_unpacks(served: tuple[str, Path], tmp_path: Path, top: str) -> None:
    url, root = served
    digest = make_archive(root / "b.tar.gz", BUNDLE, top=top)
    dest = tmp_path / "models" / "bundle"
    result = fetch(f"{url}/b.tar.gz", dest, digest)
    assert result.returncode == 0, result.stderr
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == BUNDLE


def test_sha256_mismatch_unpacks_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    make_archive(root / "b.tar.gz", BUNDLE)
    dest = tmp_path / "dest"
    result = fetch(f"{url}/b.tar.gz", dest, "0" * 64)
    assert result.returncode != 0 and "sha256 mismatch" in result.stderr
    assert not dest.exists() or not any(dest.iterdir())


@pytest.mark.parametrize(
    ("members", "symlink", "message"),
    [
        ({"manifest.json": b"{}", "../escape": b"x"}, None, "outside the destination"),
        ({"manifest.json": b"{}", "/etc/evil": b"x"}, None, "outside the destination"),
        ({"manifest.json": b"{}"}, "/etc/passwd", "not a file or directory"),
        ({"encoder.onnx": b"x"}, None, "no manifest.json"),
    ],
)
def test_refuses_unsafe_or_wrong_archives(
    served: tuple[str, Path], tmp_path: Path, members: dict, symlink: str | None, message: str
) -> None:
    url, root = served
    make_archive(root / "bad.tar.gz", members, symlink=symlink)
    result = fetch(f"{url}/bad.tar.gz", tmp_path / "dest")
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "escape").exists()
    assert not any((tmp_path / "dest").iterdir())  # the work folder is cleaned up


def test_refuses_non_http_urls(tmp_path: Path) -> None:
    result = fetch("file:///etc/passwd", tmp_path / "dest")
    assert result.returncode != 0 and "must be http(s)" in result.stderr
