"""manifest.json as a typed pydantic model: the one reader and writer of it in the repository.

Attributes mirror the JSON keys exactly (model_export/BUNDLE.md, format_version 2), e.g.
`manifest.preprocess.image_size`, `manifest.graphs["encoder"].sha256`, `manifest.tokenizer.eot_token_id`,
`manifest.clip.logit_scale`, `manifest.weights.random_init`, `manifest.variants["encoder"][0].parity.passed`,
`manifest.engines[0].compute_capability`. `Manifest.read(dir)` validates the structure and the graph contract
(graph names, input and output names in order; image size a multiple of the patch size) and raises
`ManifestError` naming the offending field; `manifest.write(dir)` replaces the file atomically.

Format 1 differs only in the SAM decoder, which also had the upscaled `masks` output; `Manifest.read` refuses
it with `OutdatedManifestError` naming `python -m model_export upgrade DIR`, which migrates such a bundle in
place (`read(dir, legacy=True)` is the upgrade's way in).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from samclip_bundle.graphs import GRAPH_INPUTS, GRAPH_OUTPUTS, GRAPHS, LEGACY_DECODER_OUTPUT
from samclip_bundle.hashing import fingerprint, sha256_file

FORMAT_VERSION = 2
LEGACY_FORMAT_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: outputs are meaningless; for development only"
UPGRADE_COMMAND = "python -m model_export upgrade"


class ManifestError(ValueError):
    """A bundle's manifest is missing, malformed or does not match the files next to it."""


class OutdatedManifestError(ManifestError):
    """The bundle was written in an older format that `python -m model_export upgrade` migrates."""


def _plain_file_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ValueError(f"file {name!r} must be a relative path inside the bundle")
    return name


def _hex_sha256(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
        raise ValueError(f"{value!r} is not a hex sha256")
    return value.lower()


FileName = Annotated[str, AfterValidator(_plain_file_name)]
Sha256 = Annotated[str, AfterValidator(_hex_sha256)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    """One graph input/output: name, shape (ints; strings for dynamic axes), numpy dtype name."""

    name: str
    shape: list[int | str]
    dtype: str


class GraphEntry(_Strict):
    file: FileName
    sha256: Sha256
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


class ModelEntry(_Strict):
    """name: architecture name; config: the full architecture JSON (model_export.config.SamClipConfig)."""

    name: str
    config: dict[str, Any]


class Preprocess(_Strict):
    """SamPredictor preprocessing: resize longest side to image_size, normalise (RGB, 0..255 units), pad."""

    image_size: int = Field(gt=0)
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    resize: Literal["longest_side"] = "longest_side"
    pad: Literal["bottom_right"] = "bottom_right"
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"


class TokenizerEntry(_Strict):
    file: FileName
    sha256: Sha256
    context_length: int = Field(77, gt=1)
    sot_token_id: int = 49406
    eot_token_id: int = 49407
    pad_token_id: int = 0


class ClipEntry(_Strict):
    """logit_scale: exp of the learnt log-scale, the multiplier applied to cosine similarities."""

    logit_scale: float = 100.0
    embed_dim: int | None = None


class WeightSource(_Strict):
    kind: Literal["sam", "open_clip", "samclip"]
    path: str
    sha256: Sha256


class Weights(_Strict):
    """Where the weights came from. bundle_file / bundle_sha256: a SAM-CLIP safetensors inside the bundle
    (read by the torch backend)."""

    random_init: bool = False
    seed: int | None = None
    sources: list[WeightSource] = Field(default_factory=list)
    warning: str | None = None
    random_parts: list[str] | None = None
    bundle_file: FileName | None = None
    bundle_sha256: Sha256 | None = None


class Parity(BaseModel):
    """Parity figures of a fast path against the plain fp32 one (samclip_bundle.parity.parity_report);
    passed = every gate held. Other figures are kept as given."""

    model_config = ConfigDict(extra="allow")

    passed: bool


class Variant(_Strict):
    """A reduced-precision graph file (`python -m model_export optimize`). runtimes: the backends' runtime
    labels it is meant for ("openvino", "onnxruntime"); rank: lower is preferred by variant "auto"."""

    name: str
    file: FileName
    sha256: Sha256
    target: str | None = None
    runtimes: list[str]
    precision: str
    rank: int = 10
    quantized_nodes: int = 0
    excluded_pattern: str | None = None
    calibration: dict[str, Any] | None = None
    parity: Parity


class EngineRecord(_Strict):
    """A TensorRT engine file (`python -m model_export build-trt`); see samclip_bundle/engines.py."""

    graph: str
    file: FileName
    sha256: Sha256
    bytes: int | None = None
    compute_capability: tuple[int, int]
    device_name: str = "unknown GPU"
    tensorrt: str
    precision: Literal["fp16", "fp32"]
    profiles: dict[str, dict[str, list[int]]] = Field(default_factory=dict)
    fp32_layers: int = 0
    outputs: list[str] = Field(default_factory=list)
    build_s: float | None = None
    built_at: str | None = None


class OptimizeRecord(_Strict):
    """One `optimize` run (also the one `export` runs by default): which graphs got the variant, or why none."""

    target: str
    variant: str
    kept: list[str]
    passed: bool
    reason: str | None = None
    parity: dict[str, Any] | None = None
    at: str


def utc_now() -> str:
    """ISO-8601 UTC timestamp to the second, e.g. 2026-01-31T12:00:00Z."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _format_errors(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return f"{where}: " + "; ".join(parts) + more


class Manifest(_Strict):
    """The whole manifest.json (see the module docstring). Mutable: writers change it, then `write` it."""

    format_version: int
    model: ModelEntry
    preprocess: Preprocess
    graphs: dict[str, GraphEntry]
    tokenizer: TokenizerEntry
    clip: ClipEntry = Field(default_factory=ClipEntry)
    weights: Weights = Field(default_factory=Weights)
    variants: dict[str, list[Variant]] = Field(default_factory=dict)
    engines: list[EngineRecord] = Field(default_factory=list)
    optimizations: list[OptimizeRecord] = Field(default_factory=list)
    opset: int | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    fingerprint: str
    created_at: str | None = None

    @model_validator(mode="after")
    def _check_contract(self) -> Manifest:
        if self.format_version not in (FORMAT_VERSION, *LEGACY_FORMAT_VERSIONS):
            raise ValueError(
                f"format_version {self.format_version} is not supported (expected {FORMAT_VERSION})"
            )
        if set(self.graphs) != set(GRAPHS):
            raise ValueError(f"graphs: expected exactly {list(GRAPHS)}, got {sorted(self.graphs)}")
        for graph in GRAPHS:
            entry = self.graphs[graph]
            outputs = GRAPH_OUTPUTS[graph]
            if graph == "sam_decoder" and self.format_version in LEGACY_FORMAT_VERSIONS:
                outputs = (*outputs, LEGACY_DECODER_OUTPUT)
            for kind, want, got in (("inputs", GRAPH_INPUTS[graph], entry.input_names),
                                    ("outputs", outputs, entry.output_names)):  # fmt: skip
                if got != want:
                    raise ValueError(f"graphs.{graph}.{kind}: expected names {list(want)}, got {list(got)}")
        unknown = sorted(set(self.variants) - set(GRAPHS)) + [
            e.graph for e in self.engines if e.graph not in GRAPHS
        ]
        if unknown:
            raise ValueError(f"variants/engines: unknown graph(s) {unknown}; known: {list(GRAPHS)}")
        patch = self.patch_size
        if self.preprocess.image_size % patch:
            raise ValueError(
                f"preprocess.image_size: {self.preprocess.image_size} is not a multiple of "
                f"model.config.encoder.patch_size {patch}"
            )
        return self

    # ---- reading and writing ------------------------------------------------------------------------------
    @staticmethod
    def path(bundle_dir: str | os.PathLike[str]) -> Path:
        """BUNDLE/manifest.json."""
        return Path(bundle_dir) / MANIFEST_NAME

    @classmethod
    def exists(cls, bundle_dir: str | os.PathLike[str]) -> bool:
        """Whether `bundle_dir` holds a manifest.json (not checked further)."""
        return cls.path(bundle_dir).is_file()

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME, *, legacy: bool = False) -> Manifest:
        """Validate parsed JSON. legacy=True also accepts format 1 (for `model_export upgrade`)."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: must hold a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version in LEGACY_FORMAT_VERSIONS and not legacy:
            bundle = Path(where).parent if where.endswith(MANIFEST_NAME) else where
            raise OutdatedManifestError(
                f"{where}: format_version {version} is outdated (this code reads {FORMAT_VERSION}); migrate the "
                f"bundle in place with `{UPGRADE_COMMAND} {bundle}`"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ManifestError(_format_errors(exc, where)) from None

    @classmethod
    def read(cls, bundle_dir: str | os.PathLike[str], *, legacy: bool = False) -> Manifest:
        """Read and validate BUNDLE/manifest.json (ManifestError naming the field on any problem)."""
        path = cls.path(bundle_dir)
        if not Path(bundle_dir).exists():
            raise ManifestError(f"bundle directory {bundle_dir} does not exist")
        if not path.is_file():
            raise ManifestError(
                f"no {MANIFEST_NAME} in {bundle_dir}: not a SAM-CLIP bundle (write one with "
                "`python -m model_export export`)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, str(path), legacy=legacy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the file's key order (unset optional fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def write(self, bundle_dir: str | os.PathLike[str]) -> Path:
        """Atomically replace BUNDLE/manifest.json (indent 2) and return its path."""
        path = self.path(bundle_dir)
        tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    # ---- artifacts ------------------------------------------------------------------------------------------
    def artifact_hashes(self) -> dict[str, str]:
        """file name -> sha256 of every artifact in the fingerprint: graphs, tokenizer, variants (engines are
        per-GPU additions and are checked on their own)."""
        files = {g.file: g.sha256 for g in self.graphs.values()}
        files[self.tokenizer.file] = self.tokenizer.sha256
        for entries in self.variants.values():
            files.update({v.file: v.sha256 for v in entries})
        return files

    def compute_fingerprint(self) -> str:
        return fingerprint(self.artifact_hashes())

    def refresh_fingerprint(self) -> str:
        """Set `fingerprint` from the artifacts' sha256 (after adding or changing a file) and return it."""
        self.fingerprint = self.compute_fingerprint()
        return self.fingerprint

    def check_artifacts(self, bundle_dir: str | os.PathLike[str]) -> list[str]:
        """Re-hash every artifact; problems found (missing file, sha256 or fingerprint mismatch), [] if none."""
        problems: list[str] = []
        root = Path(bundle_dir).resolve()
        for name, expected in sorted(self.artifact_hashes().items()):
            path = (root / name).resolve()
            if root not in path.parents:
                problems.append(f"{name}: points outside the bundle")
            elif not path.is_file():
                problems.append(f"{name}: missing from {bundle_dir}")
            elif (actual := sha256_file(path)) != expected:
                problems.append(
                    f"{name}: sha256 {actual} != manifest {expected} (corrupt, or modified after export)"
                )
        if self.fingerprint != self.compute_fingerprint():
            problems.append("fingerprint does not match the artifacts' sha256")
        return problems

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        """model.config.encoder.patch_size (ValueError naming the field when absent or not positive)."""
        try:
            patch = int(self.model.config["encoder"]["patch_size"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("model.config.encoder.patch_size: missing or not an integer") from None
        if patch <= 0:
            raise ValueError(f"model.config.encoder.patch_size: {patch} is not positive")
        return patch

    @property
    def embed_grid(self) -> int:
        """h = w = image_size / patch_size."""
        return self.preprocess.image_size // self.patch_size

    @property
    def clip_width(self) -> int:
        """Width W of the CLIP head's input patch_tokens (B, h, w, W)."""
        return int(self.graphs["clip_head"].inputs[0].shape[-1])

    def upsert_variant(self, graph: str, entry: Variant) -> None:
        """Record `entry` for `graph`, replacing an entry of the same name."""
        kept = [v for v in self.variants.get(graph, []) if v.name != entry.name]
        self.variants[graph] = [*kept, entry]
