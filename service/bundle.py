"""Load and verify an exported model bundle (see model_export/BUNDLE.md, the only export -> serve contract).

`Bundle.load(path)` reads `manifest.json`, checks its structure, and recomputes the sha256 of every artifact
it lists (the four graphs, the tokenizer and any variants). Any problem raises `BundleError` with a message
naming the file and what is wrong, so a corrupt or mismatched bundle leaves the server live but not ready.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
GRAPH_NAMES = ("encoder", "clip_head", "text_encoder", "sam_decoder")
_CHUNK = 1 << 20


class BundleError(Exception):
    """The bundle is missing, malformed or does not match its manifest."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise BundleError(f"manifest.json: missing {where}.{key}")
    return mapping[key]


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise BundleError(f"manifest.json: {where} must be a list of 3 numbers, got {value!r}")
    try:
        return (float(value[0]), float(value[1]), float(value[2]))
    except (TypeError, ValueError):
        raise BundleError(f"manifest.json: {where} must be a list of 3 numbers, got {value!r}") from None


def _artifacts(manifest: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, file name, expected sha256) for every artifact the manifest lists."""
    graphs = _require(manifest, "graphs", "")
    out = []
    for name in GRAPH_NAMES:
        graph = _require(graphs, name, "graphs")
        out.append(
            (f"graphs.{name}", _require(graph, "file", f"graphs.{name}"), _require(graph, "sha256", name))
        )
    tok = _require(manifest, "tokenizer", "")
    out.append(("tokenizer", _require(tok, "file", "tokenizer"), _require(tok, "sha256", "tokenizer")))
    variants = manifest.get("variants") or {}
    if not isinstance(variants, dict):
        raise BundleError("manifest.json: variants must be an object")
    for graph, entries in variants.items():
        for i, entry in enumerate(entries or []):
            label = f"variants.{graph}[{i}]"
            out.append((label, _require(entry, "file", label), _require(entry, "sha256", label)))
    return out


def _verify_artifacts(root: Path, manifest: dict[str, Any]) -> None:
    for label, file_name, expected in _artifacts(manifest):
        path = (root / str(file_name)).resolve()
        if root.resolve() not in path.parents:
            raise BundleError(f"{label}: file {file_name!r} points outside the bundle")
        if not path.is_file():
            raise BundleError(f"{label}: file {file_name!r} is missing from {root}")
        actual = sha256_file(path)
        if actual != str(expected).lower():
            raise BundleError(
                f"{label}: sha256 mismatch for {file_name!r} (manifest {expected}, file {actual}); "
                "the bundle is corrupt or was modified after export"
            )


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. image_size = S (square model input); embed_grid = h = w = S / patch_size;
    pixel_mean / pixel_std are RGB in 0..255 units; fingerprint identifies the exact artifacts."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)
    model_name: str
    image_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    fingerprint: str
    random_init: bool
    embed_grid: int
    context_length: int

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Read and validate `path/manifest.json`; with verify=True (default) check every artifact's sha256."""
        root = Path(path)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"no manifest.json in {root} (is this a bundle directory?)")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"manifest.json in {root} is not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise BundleError("manifest.json must hold a JSON object")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"manifest.json: format_version {version!r} unsupported (expected {FORMAT_VERSION})"
            )
        bundle = cls._from_manifest(root, manifest)
        if verify:
            _verify_artifacts(root, manifest)
        return bundle

    @classmethod
    def _from_manifest(cls, root: Path, manifest: dict[str, Any]) -> Bundle:
        model = _require(manifest, "model", "")
        pre = _require(manifest, "preprocess", "")
        config = _require(model, "config", "model")
        encoder_cfg = _require(config, "encoder", "model.config")
        tok = _require(manifest, "tokenizer", "")
        try:
            image_size = int(_require(pre, "image_size", "preprocess"))
            patch = int(_require(encoder_cfg, "patch_size", "model.config.encoder"))
            context_length = int(tok.get("context_length", 77))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"manifest.json: bad integer field: {exc}") from None
        if image_size <= 0 or patch <= 0 or image_size % patch:
            raise BundleError(f"manifest.json: image_size {image_size} is not a positive multiple of {patch}")
        for key, expected in (("resize", "longest_side"), ("pad", "bottom_right"), ("channel_order", "RGB")):
            if pre.get(key, expected) != expected:
                raise BundleError(f"manifest.json: preprocess.{key}={pre.get(key)!r} unsupported")
        fingerprint = _require(manifest, "fingerprint", "")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise BundleError("manifest.json: fingerprint must be a non-empty string")
        _artifacts(manifest)  # structural check of the file list before any hashing
        weights = manifest.get("weights") or {}
        return cls(
            path=root,
            manifest=manifest,
            model_name=str(_require(model, "name", "model")),
            image_size=image_size,
            pixel_mean=_triple(_require(pre, "pixel_mean", "preprocess"), "preprocess.pixel_mean"),
            pixel_std=_triple(_require(pre, "pixel_std", "preprocess"), "preprocess.pixel_std"),
            fingerprint=fingerprint,
            random_init=bool(weights.get("random_init", False)),
            embed_grid=image_size // patch,
            context_length=context_length,
        )

    def graph_path(self, name: str) -> Path:
        """Path of one of the four graphs ("encoder", "clip_head", "text_encoder", "sam_decoder")."""
        if name not in GRAPH_NAMES:
            raise BundleError(f"unknown graph {name!r}; known: {', '.join(GRAPH_NAMES)}")
        return self.path / self.manifest["graphs"][name]["file"]

    @property
    def clip_width(self) -> int:
        """Width W of the CLIP head's input ``patch_tokens`` (B, h, w, W), as the manifest records it."""
        spec = self.manifest["graphs"]["clip_head"]["inputs"][0]
        return int(spec["shape"][-1])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest["tokenizer"]["file"]

    @property
    def logit_scale(self) -> float:
        """Multiplier applied to cosine similarities (exp of the learnt log-scale)."""
        return float((self.manifest.get("clip") or {}).get("logit_scale", 100.0))

    def info(self) -> dict[str, Any]:
        """Summary for GET /info: model, preprocessing, provenance and fingerprint."""
        weights = self.manifest.get("weights") or {}
        return {
            "model": self.model_name,
            "path": str(self.path),
            "image_size": self.image_size,
            "embed_grid": self.embed_grid,
            "fingerprint": self.fingerprint,
            "random_init": self.random_init,
            "weights": {k: weights[k] for k in ("random_init", "seed", "warning", "sources") if k in weights},
            "opset": self.manifest.get("opset"),
            "versions": self.manifest.get("versions", {}),
            "created_at": self.manifest.get("created_at"),
            "variants": {
                g: [v.get("name") for v in vs or []]
                for g, vs in (self.manifest.get("variants") or {}).items()
            },
        }
