"""The chart's init-container script (deploy/helm/samclip/files/fetch_bundle.py) against real local HTTP(S) servers.

Each server records the requests it saw (path + headers), so the tests check what reached the wire: the
Authorization header goes to the first server only and never follows a redirect, a presigned URL's query
string (its credential) never shows in the script's output, and an unverified (no sha256) download never starts.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "samclip" / "files" / "fetch_bundle.py"
SECRET = "X-Amz-Signature=0123456789abcdefdeadbeefcafe"
TOKEN = "Bearer s3cr3t-t0ken"
BUNDLE = {"manifest.json": b'{"format_version": 1}', "encoder.onnx": b"\x08\x07" * 1000}


@dataclass
class Server:
    """A threaded HTTP server over `root`; `redirects` maps a path to a Location; `seen` logs (path, headers)."""

    root: Path
    redirects: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


def start(server: Server, tls: ssl.SSLContext | None = None) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(server.root), **kwargs)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            server.seen.append((self.path, dict(self.headers)))
            location = server.redirects.get(self.path.split("?")[0])
            if location:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.path = self.path.split("?")[0]
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if tls else "http"
    server.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Two origins (different ports): `origin` where the URL points, `storage` where redirects lead."""
    made = []
    for name in ("origin", "storage"):
        root = tmp_path / name
        root.mkdir()
        server = Server(root)
        made.append((server, start(server)))
    yield made[0][0], made[1][0]
    for _, httpd in made:
        httpd.shutdown()


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


def fetch(url: str, dest: Path, sha256: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "BUNDLE_URL": url, "BUNDLE_DEST": str(dest), "BUNDLE_SHA256": sha256, **env}
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("top", ["", "vit_b-bundle/"])
def test_downloads_checks_and_unpacks(servers: tuple[Server, Server], tmp_path: Path, top: str) -> None:
    origin, _ = servers
    digest = make_archive(origin.root / "b.tar.gz", BUNDLE, top=top)
    dest = tmp_path / "models" / "bundle"
    result = fetch(f"{origin.url}/b.tar.gz", dest, digest)
    assert result.returncode == 0, result.stderr
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == BUNDLE


def test_sha256_mismatch_unpacks_nothing(servers: tuple[Server, Server], tmp_path: Path) -> None:
    origin, _ = servers
    make_archive(origin.root / "b.tar.gz", BUNDLE)
    dest = tmp_path / "dest"
    result = fetch(f"{origin.url}/b.tar.gz", dest, "0" * 64)
    assert result.returncode != 0 and "sha256 mismatch" in result.stderr
    assert not dest.exists() or not any(dest.iterdir())


@pytest.mark.parametrize("sha256", ["", "abc", "g" * 64])
def test_sha256_is_required(servers: tuple[Server, Server], tmp_path: Path, sha256: str) -> None:
    origin, _ = servers
    make_archive(origin.root / "b.tar.gz", BUNDLE)
    result = fetch(f"{origin.url}/b.tar.gz", tmp_path / "dest", sha256)
    assert result.returncode != 0 and "BUNDLE_SHA256" in result.stderr and "required" in result.stderr
    assert origin.seen == []  # refused before any byte is requested
    assert not (tmp_path / "dest").exists()


def test_authorization_is_not_forwarded_on_redirects(servers: tuple[Server, Server], tmp_path: Path) -> None:
    """origin /start -> origin /hop (same origin) -> storage /b.tar.gz?<signature> (another origin)."""
    origin, storage = servers
    digest = make_archive(storage.root / "b.tar.gz", BUNDLE)
    origin.redirects["/start"] = "/hop"
    origin.redirects["/hop"] = f"{storage.url}/b.tar.gz?{SECRET}"
    result = fetch(f"{origin.url}/start?{SECRET}", tmp_path / "dest", digest, BUNDLE_AUTHORIZATION=TOKEN)
    assert result.returncode == 0, result.stderr
    assert [path.split("?")[0] for path, _ in origin.seen] == ["/start", "/hop"]
    assert origin.seen[0][1].get("Authorization") == TOKEN  # the URL's own server gets it
    assert "Authorization" not in origin.seen[1][1]  # not even a same-origin redirect carries it
    ((path, headers),) = storage.seen
    assert path == f"/b.tar.gz?{SECRET}" and "Authorization" not in headers
    assert (tmp_path / "dest" / "manifest.json").read_bytes() == BUNDLE["manifest.json"]


def test_presigned_url_is_never_logged(servers: tuple[Server, Server], tmp_path: Path) -> None:
    origin, storage = servers
    digest = make_archive(storage.root / "b.tar.gz", BUNDLE)
    origin.redirects["/signed"] = f"{storage.url}/b.tar.gz?{SECRET}"
    outcomes = {
        "success": fetch(f"{origin.url}/signed?{SECRET}", tmp_path / "a", digest),
        "404": fetch(f"{origin.url}/missing.tar.gz?{SECRET}", tmp_path / "b", digest),
        "refused": fetch(f"http://127.0.0.1:9/b.tar.gz?{SECRET}", tmp_path / "c", digest),
        "mismatch": fetch(f"{origin.url}/signed?{SECRET}", tmp_path / "d", "1" * 64),
        "bad url": fetch(f"http://[::1/b.tar.gz?{SECRET}", tmp_path / "e", digest),
    }
    assert outcomes["success"].returncode == 0, outcomes["success"].stderr
    assert "?<redacted>" in outcomes["success"].stdout and origin.url in outcomes["success"].stdout
    for name, result in outcomes.items():
        assert "Signature" not in result.stdout + result.stderr, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        if name != "success":
            assert result.returncode != 0, name
    assert "HTTP Error 404" in outcomes["404"].stderr


@pytest.fixture
def tls_origin(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """An HTTPS server with a self-signed certificate for 127.0.0.1 (openssl CLI) and that certificate's path."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    root = tmp_path / "tls"
    root.mkdir()
    server = Server(root)
    httpd = start(server, tls=context)
    yield server, cert
    httpd.shutdown()


def test_https_download_and_no_downgrade_redirect(
    tls_origin: tuple[Server, Path], servers: tuple[Server, Server], tmp_path: Path
) -> None:
    secure, cert = tls_origin
    _, plain = servers
    digest = make_archive(secure.root / "b.tar.gz", BUNDLE)
    make_archive(plain.root / "b.tar.gz", BUNDLE)
    ok = fetch(f"{secure.url}/b.tar.gz", tmp_path / "ok", digest, SSL_CERT_FILE=str(cert))
    assert ok.returncode == 0, ok.stderr
    secure.redirects["/down"] = f"{plain.url}/b.tar.gz"
    result = fetch(
        f"{secure.url}/down", tmp_path / "down", digest, SSL_CERT_FILE=str(cert), BUNDLE_AUTHORIZATION=TOKEN
    )
    assert result.returncode != 0 and "https to http refused" in result.stderr, result.stderr
    assert plain.seen == []  # the plain-http server was never contacted


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
    servers: tuple[Server, Server], tmp_path: Path, members: dict, symlink: str | None, message: str
) -> None:
    origin, _ = servers
    digest = make_archive(origin.root / "bad.tar.gz", members, symlink=symlink)
    result = fetch(f"{origin.url}/bad.tar.gz", tmp_path / "dest", digest)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "escape").exists()
    assert not any((tmp_path / "dest").iterdir())  # the work folder is cleaned up


def test_refuses_non_http_urls(tmp_path: Path) -> None:
    result = fetch("file:///etc/passwd", tmp_path / "dest", "0" * 64)
    assert result.returncode != 0 and "must be http(s)" in result.stderr
