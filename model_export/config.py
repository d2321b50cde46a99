"""Architecture configs for SAM-CLIP, parsed from ``model_export/configs/<name>.json`` (torch-free).

Adding an architecture is adding a JSON file to :data:`CONFIG_DIR`; :func:`list_models` reads the folder.
Every dataclass is frozen; unknown or missing JSON fields raise :class:`ConfigError` naming them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


CLIP_INPUTS = ("blocks", "neck")


class ConfigError(ValueError):
    """An architecture config is malformed or inconsistent."""


def _from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build a flat dataclass ``cls`` from ``data``, rejecting unknown and missing fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = sorted(set(required) - set(data))
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        expected = fields[name].type
        if expected == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{name} must be an integer, got {value!r}")
        if expected == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name} must be true/false, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _check_positive(where: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{where}.{name} must be a positive number, got {value!r}")


def _check_divides(where: str, what: str, num: int, den: int) -> None:
    if num % den:
        raise ConfigError(f"{where}: {what} ({num}) must be divisible by {den}")


@dataclass(frozen=True)
class EncoderConfig:
    """SAM ViT image encoder (shared by the SAM decoder and the CLIP head)."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    window_size: int
    global_attn_indexes: tuple[int, ...]
    out_chans: int
    use_rel_pos: bool = True

    def __post_init__(self) -> None:
        w = "encoder"
        _check_positive(w, patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth)
        _check_positive(w, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, out_chans=self.out_chans)
        _check_divides(w, "embed_dim", self.embed_dim, self.num_heads)
        if self.window_size < 0:
            raise ConfigError(f"{w}.window_size must be >= 0 (0 = global attention everywhere)")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"{w}.global_attn_indexes {bad} out of range for depth {self.depth}")


@dataclass(frozen=True)
class PromptEncoderConfig:
    """SAM prompt encoder; its embedding dim is ``encoder.out_chans``."""

    mask_in_chans: int

    def __post_init__(self) -> None:
        _check_positive("prompt_encoder", mask_in_chans=self.mask_in_chans)
        _check_divides("prompt_encoder", "mask_in_chans", self.mask_in_chans, 4)


@dataclass(frozen=True)
class MaskDecoderConfig:
    """SAM mask decoder (TwoWayTransformer of width ``encoder.out_chans``)."""

    transformer_depth: int
    transformer_mlp_dim: int
    transformer_num_heads: int
    num_multimask_outputs: int
    iou_head_depth: int
    iou_head_hidden_dim: int

    def __post_init__(self) -> None:
        _check_positive("mask_decoder", **dataclasses.asdict(self))


@dataclass(frozen=True)
class ClipHeadConfig:
    """CLIP head: ``depth`` pre-LN blocks over the encoder patch tokens, projection to ``embed_dim``.

    ``pos_grid`` is the side of the learnable positional-embedding grid, bicubically resized to the token grid.
    ``input`` says which encoder tensor the head reads (the encoder graph's ``patch_tokens`` output):
    ``"blocks"``, the last ViT block's tokens (width ``encoder.embed_dim``; vit_b), or ``"neck"``, SAM's image
    embedding after the neck (width ``encoder.out_chans``; its 3x3 conv gives every token its neighbourhood,
    which the small demo model needs to tell shapes apart).
    """

    depth: int
    num_heads: int
    mlp_ratio: float
    pos_grid: int
    embed_dim: int
    input: str = "blocks"

    def __post_init__(self) -> None:
        _check_positive("clip_head", **{k: v for k, v in dataclasses.asdict(self).items() if k != "input"})
        if self.input not in CLIP_INPUTS:
            raise ConfigError(f"clip_head.input must be one of {CLIP_INPUTS}, got {self.input!r}")


@dataclass(frozen=True)
class TextConfig:
    """OpenCLIP text tower."""

    context_length: int
    vocab_size: int
    width: int
    heads: int
    layers: int
    embed_dim: int
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        _check_positive("text", **dataclasses.asdict(self))
        _check_divides("text", "width", self.width, self.heads)


@dataclass(frozen=True)
class SamClipConfig:
    """Whole SAM-CLIP architecture. ``image_size`` S is the square, padded encoder input side."""

    name: str
    image_size: int
    encoder: EncoderConfig
    prompt_encoder: PromptEncoderConfig
    mask_decoder: MaskDecoderConfig
    clip_head: ClipHeadConfig
    text: TextConfig
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _check_positive("config", image_size=self.image_size)
        _check_divides("config", "image_size", self.image_size, self.encoder.patch_size)
        if self.clip_head.embed_dim != self.text.embed_dim:
            raise ConfigError(
                f"clip_head.embed_dim ({self.clip_head.embed_dim}) must equal text.embed_dim "
                f"({self.text.embed_dim}): image and text embeddings share one space"
            )
        _check_divides("clip_head", "its input width", self.clip_width, self.clip_head.num_heads)
        c = self.encoder.out_chans
        _check_divides("encoder", "out_chans (SAM decoder width)", c, 8)
        _check_divides("mask_decoder", "out_chans // 2", c // 2, self.mask_decoder.transformer_num_heads)
        for name in ("pixel_mean", "pixel_std"):
            values = getattr(self, name)
            if len(values) != 3:
                raise ConfigError(f"{name} must have 3 values (RGB), got {len(values)}")
        if any(v <= 0 for v in self.pixel_std):
            raise ConfigError(f"pixel_std must be positive, got {self.pixel_std}")

    @property
    def embed_grid(self) -> int:
        """Side h = w of the encoder token grid at ``image_size`` (S / patch_size)."""
        return self.image_size // self.encoder.patch_size

    @property
    def clip_width(self) -> int:
        """Width W of the encoder's ``patch_tokens`` output, the CLIP head's input (see ClipHeadConfig.input)."""
        return self.encoder.out_chans if self.clip_head.input == "neck" else self.encoder.embed_dim

    @property
    def mask_input_size(self) -> int:
        """Side of SAM's low-res mask prompt / low-res mask output (4 * embed_grid)."""
        return 4 * self.embed_grid

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the same layout as the config files (tuples become lists)."""

        def listify(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: listify(v) for k, v in value.items()}
            if isinstance(value, tuple | list):
                return [listify(v) for v in value]
            return value

        return listify(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def architecture_dict(self) -> dict[str, Any]:
        """``to_dict()`` without the free-text fields (for "does this checkpoint fit" comparisons)."""
        d = self.to_dict()
        d.pop("description", None)
        d.pop("name", None)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamClipConfig:
        """Parse and validate a config dict (the JSON file's content)."""
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
        parts = {
            "encoder": EncoderConfig,
            "prompt_encoder": PromptEncoderConfig,
            "mask_decoder": MaskDecoderConfig,
            "clip_head": ClipHeadConfig,
            "text": TextConfig,
        }
        flat = dict(data)
        for key, sub_cls in parts.items():
            if key in flat:
                flat[key] = _from_mapping(sub_cls, flat[key], key)
        return _from_mapping(cls, flat, "config")


def list_models() -> list[str]:
    """Names of the bundled architectures (``configs/*.json`` stems), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name_or_path: str | Path | SamClipConfig) -> SamClipConfig:
    """Load a config by bundled name (``"tiny"``, ``"vit_b"``) or by path to a JSON file."""
    if isinstance(name_or_path, SamClipConfig):
        return name_or_path
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        if str(name_or_path) not in list_models():
            raise ConfigError(f"unknown model {str(name_or_path)!r}; available: {list_models()}")
        path = CONFIG_DIR / f"{name_or_path}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
    return SamClipConfig.from_dict(data)
