"""Init-container step: download a model bundle archive (.tar.gz) from an object-store URL and unpack it.

Environment:
    BUNDLE_URL            http(s) URL of a gzip'd tar whose root (or single top folder) holds manifest.json.
                          Use a presigned S3/GCS/Azure URL or any HTTPS endpoint.
    BUNDLE_DEST           directory to fill (an emptyDir shared with the server container).
    BUNDLE_SHA256         optional hex sha256 of the archive; a mismatch aborts before anything is unpacked.
    BUNDLE_AUTHORIZATION  optional Authorization header value (from a Secret).
    BUNDLE_TIMEOUT_S      socket timeout in seconds (default 600).

Only regular files and directories are unpacked; absolute paths, `..`, links and devices are refused.
Standard library only, so it runs with the server image's interpreter. Exit code 0 on success.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20


def download(url: str, dest: Path, timeout: float, authorization: str | None) -> str:
    """Stream `url` into `dest`; return the hex sha256 of the bytes."""
    if not url.startswith(("https://", "http://")):
        raise SystemExit(f"BUNDLE_URL must be http(s), got {url!r}")
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    digest = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as out:
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


def main() -> int:
    url = os.environ["BUNDLE_URL"]
    dest = Path(os.environ.get("BUNDLE_DEST", "/models/bundle"))
    expected = os.environ.get("BUNDLE_SHA256", "").strip().lower()
    timeout = float(os.environ.get("BUNDLE_TIMEOUT_S", "600"))
    dest.mkdir(parents=True, exist_ok=True)
    # Work inside `dest` (its own volume): no copy of a multi-GB bundle through /tmp, and the final moves are
    # renames. The work folder is removed on success and on failure.
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
        archive_path = Path(tmp) / "bundle.tar.gz"
        actual = download(url, archive_path, timeout, os.environ.get("BUNDLE_AUTHORIZATION"))
        if expected and actual != expected:
            raise SystemExit(f"sha256 mismatch: expected {expected}, downloaded {actual}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archive_path, "r:gz") as archive:
            archive.extractall(unpacked, members=safe_members(archive))  # noqa: S202 (members vetted above)
        root = bundle_root(unpacked)
        for item in root.iterdir():
            target = dest / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), target)
    print(f"bundle from {url} (sha256 {actual}) unpacked into {dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
