"""Bundle manifest helpers (torch-free): sha256, fingerprint, graph I/O description, read/write.

The manifest layout is fixed by model_export/BUNDLE.md (format_version 1). Everything here only needs the
standard library plus `onnx` (imported lazily, for reading graph inputs/outputs).
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: outputs are meaningless; for development only"
GRAPH_FILES = {
    "encoder": "encoder.onnx",
    "clip_head": "clip_head.onnx",
    "text_encoder": "text_encoder.onnx",
    "sam_decoder": "sam_decoder.onnx",
}
TOKENIZER_FILE = "tokenizer.json"
# Distributions whose versions are recorded in manifest["versions"] (missing ones are skipped).
_VERSIONED = {
    "samclip_serve": "samclip-serve",
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxslim": "onnxslim",
    "open_clip": "open_clip_torch",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
}
_SAMCLIP_FALLBACK_VERSION = "0.1.0"


class ManifestError(ValueError):
    """A bundle's manifest is missing, malformed or does not match the files next to it."""


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (works for multi-GB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(artifact_sha256: dict[str, str]) -> str:
    """Bundle fingerprint: sha256 over the hex sha256 of every artifact, sorted by file name.

    artifact_sha256 maps file name -> hex sha256. The digests (ASCII hex) are concatenated in the order of
    their sorted file names and hashed once more, so any changed, added or removed artifact changes it.
    """
    digest = hashlib.sha256()
    for name in sorted(artifact_sha256):
        digest.update(artifact_sha256[name].encode("ascii"))
    return digest.hexdigest()


def _dim(d: Any) -> int | str:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or "?"


def _value_info(vi: Any) -> dict[str, Any]:
    from onnx import helper

    ttype = vi.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    return {"name": vi.name, "shape": [_dim(d) for d in ttype.shape.dim], "dtype": dtype}


def graph_io(onnx_path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs/outputs of a saved ONNX graph: [{"name", "shape" (ints and dim_param strings), "dtype"}].

    Initializers listed as inputs (old exporters) are left out; weights are not loaded.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {init.name for init in model.graph.initializer}
    return {
        "inputs": [_value_info(vi) for vi in model.graph.input if vi.name not in inits],
        "outputs": [_value_info(vi) for vi in model.graph.output],
    }


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the bundle (distribution metadata, nothing imported)."""
    versions: dict[str, str] = {"python": platform.python_version()}
    for key, dist in _VERSIONED.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if key == "samclip_serve":
                versions[key] = _SAMCLIP_FALLBACK_VERSION
    return versions


def weights_record(
    random_init: bool, seed: int | None, sources: list[dict[str, str]], random_parts: list[str] | None = None
) -> dict[str, Any]:
    """The manifest's "weights" entry. sources: [{"kind": "sam|open_clip|samclip", "path", "sha256"}];
    random_parts: the parts left random when checkpoints covered only some of them."""
    record: dict[str, Any] = {"random_init": bool(random_init), "seed": seed, "sources": list(sources)}
    if random_init:
        record["warning"] = RANDOM_WEIGHTS_WARNING
    if random_parts:
        record["random_parts"] = list(random_parts)
    return record


def artifact_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """file name -> sha256 for every artifact the manifest lists (graphs, tokenizer, variants)."""
    files = {g["file"]: g["sha256"] for g in manifest.get("graphs", {}).values()}
    if "tokenizer" in manifest:
        files[manifest["tokenizer"]["file"]] = manifest["tokenizer"]["sha256"]
    for variants in manifest.get("variants", {}).values():
        for variant in variants:
            files[variant["file"]] = variant["sha256"]
    return files


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_manifest(bundle_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json (indent 2, keys in insertion order) and return its path."""
    path = Path(bundle_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and sanity-check BUNDLE/manifest.json (format version and required sections)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path} not found: not a SAM-CLIP bundle (run `python -m model_export export`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {manifest.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    missing = [k for k in ("model", "preprocess", "graphs", "tokenizer", "weights") if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing sections {missing}")
    return manifest


def check_artifacts(bundle_dir: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Re-hash every artifact; return a list of problems (missing file, sha256 or fingerprint mismatch)."""
    problems: list[str] = []
    hashes = artifact_hashes(manifest)
    for name, expected in sorted(hashes.items()):
        path = Path(bundle_dir) / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (actual := file_sha256(path)) != expected:
            problems.append(f"{name}: sha256 {actual} != manifest {expected}")
    if manifest.get("fingerprint") != fingerprint(hashes):
        problems.append("fingerprint does not match the artifacts' sha256")
    return problems
