"""Checkpoint I/O: official SAM weights, OpenCLIP text weights, and SAM-CLIP safetensors files.

Nothing here executes pickle: ``.safetensors`` files are read with safetensors, anything else with
``torch.load(weights_only=True)``. Every loader is strict: missing keys, unexpected keys and shape
mismatches raise :class:`CheckpointError` naming the offending keys, before any weight is changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from samclip_bundle.hashing import sha256_file

from .config import ConfigError, SamClipConfig, load_config
from .modeling.samclip import SamClip

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
SAM_IGNORED_KEYS = frozenset({"pixel_mean", "pixel_std"})  # non-persistent buffers in SAM; tolerated
OPEN_CLIP_TEXT_KEYS = (
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "text_projection",
)
OPEN_CLIP_IGNORED_KEYS = frozenset({"logit_bias", "attn_mask", "text.attn_mask"})
SAMCLIP_FORMAT = "samclip"
SAMCLIP_FORMAT_VERSION = 1

StateDict = dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the offending keys."""


def _key_list(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} key(s): {shown}{more}"


def read_state_dict(path: str | os.PathLike[str]) -> StateDict:
    """Read a flat ``{name: tensor}`` mapping from ``.safetensors`` or a torch file (weights only).

    Wrappers ``{"state_dict": ...}`` / ``{"model": ...}`` and a DDP ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or pickle that is not plain weights
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a state dict")
    not_tensors = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"checkpoint {path} has non-tensor entries: {_key_list(not_tensors)}")
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return dict(data)


def _check_fit(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    what: str,
    also_unexpected: Iterable[str] = (),
) -> None:
    """Raise CheckpointError if ``given`` has missing/unexpected keys or shapes differing from ``expected``.

    ``also_unexpected``: checkpoint keys already known not to belong anywhere (reported as unexpected).
    """
    missing = set(expected) - set(given)
    unexpected = (set(given) - set(expected)) | set(also_unexpected)
    mismatched = [
        f"{k} (checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(given))
        if given[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {_key_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch in {_key_list(mismatched, limit=4)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def _copy_into(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy already-validated tensors into ``model``'s parameters/buffers of the same names."""
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in tensors.items():
            targets[name].copy_(value)


def _sam_arch(sd: Mapping[str, torch.Tensor], cfg: SamClipConfig | None = None) -> dict[str, int]:
    """Architecture facts readable from SAM keys (from a checkpoint, or from ``cfg`` for comparison)."""
    if cfg is not None:
        e = cfg.encoder
        return {
            "embed_dim": e.embed_dim,
            "depth": e.depth,
            "patch_size": e.patch_size,
            "image_size": cfg.image_size,
            "out_chans": e.out_chans,
        }
    facts: dict[str, int] = {}
    patch = sd.get("image_encoder.patch_embed.proj.weight")
    if patch is not None and patch.ndim == 4:
        facts.update(embed_dim=patch.shape[0], patch_size=patch.shape[-1])
        pos = sd.get("image_encoder.pos_embed")
        if pos is not None and pos.ndim == 4:
            facts["image_size"] = pos.shape[1] * patch.shape[-1]
    blocks = {k.split(".")[2] for k in sd if k.startswith("image_encoder.blocks.")}
    if blocks:
        facts["depth"] = len(blocks)
    neck = sd.get("image_encoder.neck.0.weight")
    if neck is not None:
        facts["out_chans"] = neck.shape[0]
    return facts


def load_sam_checkpoint(model: SamClip, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an official SAM checkpoint (``sam_vit_b_01ec64.pth`` layout) into the SAM parts of ``model``.

    Strict over ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``; CLIP head and text tower
    are untouched. Returns ``{"kind": "sam", "path", "sha256", "tensors"}`` for provenance.
    """
    sd = read_state_dict(path)
    sd = {k: v for k, v in sd.items() if k not in SAM_IGNORED_KEYS}
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(SAM_PREFIXES)}
    cfg = model.config
    have, want = _sam_arch(sd), _sam_arch({}, cfg)
    differs = {k: (have[k], want[k]) for k in have if have[k] != want[k]}
    try:
        _check_fit(expected, sd, f"SAM checkpoint {path}")
    except CheckpointError as exc:
        if differs:
            detail = ", ".join(f"{k}={a} (config {b})" for k, (a, b) in sorted(differs.items()))
            raise CheckpointError(
                f"SAM checkpoint {path} does not fit config {cfg.name!r}: checkpoint has {detail}. "
                f"Pick the matching --model. Details: {exc}"
            ) from None
        raise
    _copy_into(model, sd)
    return {"kind": "sam", "path": str(path), "sha256": sha256_file(path), "tensors": len(sd)}


def _open_clip_text_part(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Map open_clip keys to ``text_encoder.*`` / ``logit_scale``; returns (mapped, unexpected keys)."""
    custom_text = "token_embedding.weight" not in sd and any(k.startswith("text.") for k in sd)
    prefix = "text." if custom_text else ""
    mapped: StateDict = {}
    unexpected: list[str] = []
    for key, value in sd.items():
        if key.startswith("visual.") or key in OPEN_CLIP_IGNORED_KEYS:
            continue
        if key == "logit_scale":
            mapped["logit_scale"] = value.reshape(())
            continue
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name is not None and name.startswith(OPEN_CLIP_TEXT_KEYS):
            mapped[f"text_encoder.{name}"] = value
        else:
            unexpected.append(key)
    return mapped, unexpected


def load_open_clip_checkpoint(model: SamClip, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the text tower and logit scale from an open_clip state dict (e.g. ``ViT-L-14``).

    Accepts ``{"state_dict": ...}`` nesting and ``module.`` prefixes, CLIP (top-level text keys) and
    CustomTextCLIP (``text.*``) layouts. ``visual.*``, ``logit_bias`` and ``attn_mask`` are ignored;
    everything else must match ``model.text_encoder`` + ``logit_scale`` exactly.
    Returns ``{"kind": "open_clip", "path", "sha256", "tensors"}`` for provenance.
    """
    sd = read_state_dict(path)
    mapped, unexpected = _open_clip_text_part(sd)
    expected = {
        k: v for k, v in model.state_dict().items() if k.startswith("text_encoder.") or k == "logit_scale"
    }
    what = f"OpenCLIP checkpoint {path} (text tower, config {model.config.name!r})"
    _check_fit(expected, mapped, what, also_unexpected=unexpected)
    _copy_into(model, mapped)
    return {"kind": "open_clip", "path": str(path), "sha256": sha256_file(path), "tensors": len(mapped)}


def save_samclip(
    model: SamClip, path: str | os.PathLike[str], extra_metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write every weight of ``model`` to one safetensors file, with the config JSON in its metadata.

    Metadata (string values): ``format`` = "samclip", ``format_version`` = "1", ``config`` (architecture
    JSON), ``extra`` (JSON of ``extra_metadata``, e.g. provenance). The write is atomic.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": SAMCLIP_FORMAT,
        "format_version": str(SAMCLIP_FORMAT_VERSION),
        "config": model.config.to_json(),
        "extra": json.dumps(dict(extra_metadata or {}), sort_keys=True, default=str),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_samclip_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Header of a SAM-CLIP safetensors file: ``{"format_version", "config" (dict), "extra" (dict)}``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"cannot read SAM-CLIP checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if raw.get("format") != SAMCLIP_FORMAT or "config" not in raw:
        raise CheckpointError(f"{path} is not a SAM-CLIP checkpoint (no 'samclip' format/config metadata)")
    try:
        return {
            "format_version": int(raw.get("format_version", "0")),
            "config": json.loads(raw["config"]),
            "extra": json.loads(raw.get("extra") or "{}"),
        }
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed SAM-CLIP metadata: {exc}") from exc


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: checkpoint {va!r} vs requested {vb!r}")
    return out


def load_samclip(
    path: str | os.PathLike[str], config: str | SamClipConfig | None = None
) -> tuple[SamClip, dict[str, Any]]:
    """Read a file written by :func:`save_samclip` -> (SamClip in eval mode, metadata).

    ``config`` (name, JSON path or SamClipConfig), when given, must describe the same architecture as the
    config stored in the file. Metadata is ``{"format_version", "config", "extra", "sha256"}``.
    """
    meta = read_samclip_metadata(path)
    if meta["format_version"] > SAMCLIP_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta['format_version']} is newer than supported")
    try:
        stored = SamClipConfig.from_dict(meta["config"])
        requested = load_config(config) if config is not None else None
    except ConfigError as exc:
        raise CheckpointError(f"{path}: bad config: {exc}") from exc
    if requested is not None and requested.architecture_dict() != stored.architecture_dict():
        diff = _config_diff(stored.architecture_dict(), requested.architecture_dict())
        raise CheckpointError(
            f"SAM-CLIP checkpoint {path} was saved for config {stored.name!r}, which differs from "
            f"{requested.name!r}: "
            + "; ".join(diff[:6])
            + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else "")
        )
    sd = read_state_dict(path)
    model = SamClip(stored)
    _check_fit(model.state_dict(), sd, f"SAM-CLIP checkpoint {path}")
    _copy_into(model, sd)
    meta["sha256"] = sha256_file(path)
    return model.eval(), meta
