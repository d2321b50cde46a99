"""Assemble a SamClip from its weight sources and record where every part came from.

Parts and the checkpoints that hold them:
  SAM checkpoint (--sam-checkpoint)        image_encoder, prompt_encoder, mask_decoder
  OpenCLIP checkpoint (--clip-checkpoint)  text_encoder, logit_scale
  SAM-CLIP checkpoint (--samclip-checkpoint) every part (SAM / OpenCLIP files, if also given, override)
Any part no checkpoint covers keeps random weights, which is only allowed with random_init=True (and then the
manifest says so loudly). The provenance dict is what `export_bundle` writes to manifest["weights"], and
`model_from_manifest` rebuilds the exact same model from it (re-checking the sha256 of each file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_export.build import build_model
from model_export.checkpoint import (
    CheckpointError,
    load_open_clip_checkpoint,
    load_sam_checkpoint,
    load_samclip,
)
from model_export.config import SamClipConfig, load_config
from samclip_bundle.hashing import sha256_file
from samclip_bundle.manifest import Manifest

PARTS = {
    "sam": ("image_encoder", "prompt_encoder", "mask_decoder"),
    "open_clip": ("text_encoder", "logit_scale"),
    "samclip": (
        "image_encoder",
        "prompt_encoder",
        "mask_decoder",
        "clip_head",
        "text_encoder",
        "logit_scale",
    ),
}
ALL_PARTS = PARTS["samclip"]


class WeightsError(ValueError):
    """The requested weight sources are incomplete or inconsistent (CLI exit status 2)."""


def assemble_model(
    model: str | SamClipConfig | None,
    sam: str | Path | None = None,
    clip: str | Path | None = None,
    samclip: str | Path | None = None,
    random_init: bool = False,
    seed: int | None = None,
) -> tuple[Any, SamClipConfig, dict[str, Any]]:
    """Build the model -> (SamClip in eval mode, its config, provenance).

    provenance: {"random_init": bool, "seed": int | None, "sources": [{"kind", "path", "sha256"}],
    "random_parts": [...]} (random_parts only when some part keeps random weights).
    Raises WeightsError (nothing to load / random parts without random_init) or CheckpointError.
    """
    covered = {part for kind, path in (("sam", sam), ("open_clip", clip), ("samclip", samclip)) if path
               for part in PARTS[kind]}  # fmt: skip
    random_parts = [p for p in ALL_PARTS if p not in covered]
    if random_parts and not random_init:
        raise WeightsError(_missing_message(random_parts, bool(covered)))
    if random_init and seed is None:
        seed = 0
    sources: list[dict[str, Any]] = []
    if samclip:
        net, meta = load_samclip(samclip, config=model)
        sources.append({"kind": "samclip", "path": str(Path(samclip).resolve()), "sha256": meta["sha256"]})
    elif model is None:
        raise WeightsError("--model is required unless --samclip-checkpoint is given")
    else:
        net = build_model(model, seed=seed)
    for kind, path, loader in (
        ("sam", sam, load_sam_checkpoint),
        ("open_clip", clip, load_open_clip_checkpoint),
    ):
        if path:
            record = loader(net, path)
            sources.append({"kind": kind, "path": str(Path(path).resolve()), "sha256": record["sha256"]})
    provenance: dict[str, Any] = {"random_init": bool(random_parts), "seed": seed if random_parts else None,
                                  "sources": sources}  # fmt: skip
    if random_parts and covered:
        provenance["random_parts"] = random_parts
    return net.eval(), net.config, provenance


def _missing_message(random_parts: list[str], some_loaded: bool) -> str:
    if not some_loaded:
        return (
            "no weights given: pass --samclip-checkpoint, or --sam-checkpoint and --clip-checkpoint "
            "(the CLIP head then needs --random-init), or --random-init --seed N for a development bundle "
            "with RANDOM weights"
        )
    return (
        f"these parts would keep random weights: {', '.join(random_parts)} (no given checkpoint holds them; "
        "only a SAM-CLIP checkpoint has the CLIP head). Pass --random-init --seed N to allow that explicitly"
    )


def model_from_manifest(manifest: Manifest) -> tuple[Any, SamClipConfig]:
    """Rebuild the exported model from manifest.model.config and manifest.weights.

    Checkpoint files must still exist with the recorded sha256 (CheckpointError otherwise).
    """
    cfg = SamClipConfig.from_dict(manifest.model.config)
    weights = manifest.weights
    paths: dict[str, str] = {}
    for source in weights.sources:
        path = Path(source.path)
        if not path.is_file():
            raise CheckpointError(f"weights file recorded in the manifest is gone: {path}")
        if sha256_file(path) != source.sha256:
            raise CheckpointError(f"{path} changed since export (sha256 differs from the manifest)")
        paths[source.kind] = str(path)
    net, _, _ = assemble_model(
        load_config(cfg),
        sam=paths.get("sam"),
        clip=paths.get("open_clip"),
        samclip=paths.get("samclip"),
        random_init=weights.random_init,
        seed=weights.seed,
    )
    return net, cfg
