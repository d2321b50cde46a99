"""sha256 of bundle files and the bundle fingerprint (the one implementation in the repository)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str], chunk_size: int = _CHUNK) -> str:
    """Lowercase hex sha256 of a file's bytes, streamed in 1 MiB chunks (multi-GB files are fine)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(artifact_sha256: Mapping[str, str]) -> str:
    """Bundle fingerprint: sha256 over the hex sha256 of every artifact, in the order of sorted file names.

    artifact_sha256 maps file name -> hex sha256; any changed, added or removed artifact changes the result.
    """
    digest = hashlib.sha256()
    for name in sorted(artifact_sha256):
        digest.update(artifact_sha256[name].encode("ascii"))
    return digest.hexdigest()
