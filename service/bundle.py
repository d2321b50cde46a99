"""Load and verify an exported model bundle (model_export/BUNDLE.md; the contract is samclip_bundle.manifest).

`Bundle.load(path)` reads and validates `manifest.json` through the typed `Manifest` and recomputes the sha256
of every artifact it lists (the four graphs, the tokenizer and any variants). Any problem raises `BundleError`
with a message naming the file or field and what is wrong (a format-1 bundle: the upgrade command), so a
corrupt or mismatched bundle leaves the server live but not ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samclip_bundle.graphs import check_graph
from samclip_bundle.manifest import Manifest, ManifestError


class BundleError(Exception):
    """The bundle is missing, malformed or does not match its manifest."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. image_size = S (square model input); embed_grid = h = w = S / patch_size;
    pixel_mean / pixel_std are RGB in 0..255 units; fingerprint identifies the exact artifacts."""

    path: Path
    manifest: Manifest = field(repr=False)
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
        if not root.exists():
            raise BundleError(f"bundle path {root} does not exist")
        if not root.is_dir():
            raise BundleError(f"bundle path {root} is not a directory")
        try:
            manifest = Manifest.read(root)
        except (ManifestError, ValueError) as exc:
            raise BundleError(str(exc)) from None
        if verify and (problems := manifest.check_artifacts(root)):
            raise BundleError(f"bundle {root} does not match its manifest: " + "; ".join(problems))
        return cls.from_manifest(root, manifest)

    @classmethod
    def from_manifest(cls, root: Path, manifest: Manifest) -> Bundle:
        """A Bundle over an already validated manifest (no hashing)."""
        pre = manifest.preprocess
        return cls(
            path=root,
            manifest=manifest,
            model_name=manifest.model.name,
            image_size=pre.image_size,
            pixel_mean=pre.pixel_mean,
            pixel_std=pre.pixel_std,
            fingerprint=manifest.fingerprint,
            random_init=manifest.weights.random_init,
            embed_grid=manifest.embed_grid,
            context_length=manifest.tokenizer.context_length,
        )

    def graph_path(self, name: str) -> Path:
        """Path of one of the four plain graphs ("encoder", "clip_head", "text_encoder", "sam_decoder")."""
        try:
            check_graph(name)
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        return self.path / self.manifest.graphs[name].file

    @property
    def clip_width(self) -> int:
        """Width W of the CLIP head's input ``patch_tokens`` (B, h, w, W), as the manifest records it."""
        return self.manifest.clip_width

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest.tokenizer.file

    @property
    def logit_scale(self) -> float:
        """Multiplier applied to cosine similarities (exp of the learnt log-scale)."""
        return float(self.manifest.clip.logit_scale)

    def info(self) -> dict[str, Any]:
        """Summary for GET /info: model, preprocessing, provenance and fingerprint."""
        m = self.manifest
        weights = m.weights.model_dump(mode="json", include={"random_init", "seed", "warning", "sources"})
        return {
            "model": self.model_name,
            "path": str(self.path),
            "image_size": self.image_size,
            "embed_grid": self.embed_grid,
            "fingerprint": self.fingerprint,
            "random_init": self.random_init,
            "weights": {k: v for k, v in weights.items() if v is not None},
            "opset": m.opset,
            "versions": m.versions,
            "created_at": m.created_at,
            "variants": {g: [v.name for v in vs] for g, vs in m.variants.items()},
        }
