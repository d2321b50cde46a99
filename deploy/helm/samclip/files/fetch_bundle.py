"""Init-container step: download a model bundle archive (.tar.gz) from an object-store URL and unpack it.

Environment:
    BUNDLE_URL            http(s) URL of a gzip'd tar whose root (or single top folder) holds manifest.json.
                          Use a presigned S3/GCS/Azure URL (from a Secret: its query string is a credential) or
                          any HTTPS endpoint. Never logged: messages show scheme://host/path only.
    BUNDLE_SHA256         hex sha256 of the archive (required); a mismatch aborts before anything is unpacked.
    BUNDLE_DEST           directory to fill (an emptyDir shared with the server container).
    BUNDLE_AUTHORIZATION  optional Authorization header value (from a Secret). Sent to BUNDLE_URL's server only:
                          it is never forwarded on a redirect (a presigned redirect target needs none).
    BUNDLE_TIMEOUT_S      socket timeout in seconds (default 600).

Redirects: at most urllib's limit (10), http(s) targets only, never from https down to http.
Only regular files and directories are unpacked; absolute paths, `..`, links and devices are refused.
Standard library only, so it runs with the server image's interpreter. Exit code 0 on success.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

CHUNK = 1 << 20
URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact(url: str) -> str:
    """`url` without user info, query and fragment (where presigned URLs carry their credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "?<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, "", "")) + query


def scrub(text: str) -> str:
    """Every URL inside `text` redacted (exception messages may quote a URL or a redirect target)."""
    return URL_IN_TEXT.sub(lambda match: redact(match.group(0)), text)


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only, never downgrading https to http. The Authorization header is an
    *unredirected* header (see `download`), so urllib does not copy it to the redirected request."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        old, new = urlsplit(req.full_url).scheme, urlsplit(newurl).scheme
        if new not in ("http", "https"):
            raise urllib.error.HTTPError(
                redact(req.full_url), code, f"redirect to a {new!r} URL refused", headers, fp
            )
        if old == "https" and new == "http":
            raise urllib.error.HTTPError(
                redact(req.full_url), code, "redirect from https to http refused", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, dest: Path, timeout: float, authorization: str | None) -> str:
    """Stream `url` into `dest`; return the hex sha256 of the bytes."""
    if urlsplit(url).scheme not in ("https", "http"):
        raise SystemExit(f"BUNDLE_URL must be http(s), got {redact(url)!r}")
    request = urllib.request.Request(url)
    if authorization:
        request.add_unredirected_header("Authorization", authorization)
    opener = urllib.request.build_opener(SafeRedirects)
    digest = hashlib.sha256()
    with opener.open(request, timeout=timeout) as response, dest.open("wb") as out:
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def safe_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Members that are plain files/dirs with relative paths staying inside the destination."""
    members = []
    for member in archive.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise SystemExit(f"refusing archive member outside the destination: {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise SystemExit(f"refusing archive member that is not a file or directory: {member.name!r}")
        member.mode = 0o755 if member.isdir() else 0o644
        members.append(member)
    return members


def bundle_root(folder: Path) -> Path:
    """The folder holding manifest.json: `folder` itself or its single sub-folder."""
    if (folder / "manifest.json").is_file():
        return folder
    children = [child for child in folder.iterdir() if child.is_dir()]
    if len(children) == 1 and (children[0] / "manifest.json").is_file():
        return children[0]
    raise SystemExit("archive has no manifest.json at its root or in a single top folder")


def fetch(url: str, dest: Path, expected: str, timeout: float, authorization: str | None) -> str:
    """Download, verify and unpack into `dest`; return the archive's sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    # Work inside `dest` (its own volume): no copy of a multi-GB bundle through /tmp, and the final moves are
    # renames. The work folder is removed on success and on failure.
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
        archive_path = Path(tmp) / "bundle.tar.gz"
        try:
            actual = download(url, archive_path, timeout, authorization)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SystemExit(f"download of {redact(url)} failed: {scrub(str(exc))}") from None
        if actual != expected:
            raise SystemExit(f"sha256 mismatch: expected {expected}, downloaded {actual}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archive_path, "r:gz") as archive:
            archive.extractall(unpacked, members=safe_members(archive))  # noqa: S202 (members vetted above)
        for item in bundle_root(unpacked).iterdir():
            target = dest / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), target)
    return actual


def main() -> int:
    url = os.environ.get("BUNDLE_URL", "")
    expected = os.environ.get("BUNDLE_SHA256", "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise SystemExit(
            "BUNDLE_SHA256 (64 hex digits) is required: an http(s) bundle is only used when verified"
        )
    dest = Path(os.environ.get("BUNDLE_DEST", "/models/bundle"))
    timeout = float(os.environ.get("BUNDLE_TIMEOUT_S", "600"))
    actual = fetch(url, dest, expected, timeout, os.environ.get("BUNDLE_AUTHORIZATION") or None)
    print(f"bundle from {redact(url)} (sha256 {actual}) unpacked into {dest}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 (last resort: never let a traceback print the URL)
        sys.exit(f"fetch_bundle failed: {type(exc).__name__}: {scrub(str(exc))}")
