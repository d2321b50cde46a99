"""All service settings: ONE pydantic-settings class, read from `SAMCLIP_*` environment variables.

Example: `SAMCLIP_BUNDLE=bundles/tiny SAMCLIP_MAX_BATCH_SIZE=8 python -m service`. List settings accept JSON
(`'["CUDAExecutionProvider","CPUExecutionProvider"]'`) or comma-separated text (`CUDAExecutionProvider,CPU...`).
Keyword arguments (`Settings(bundle=...)`, used by the CLI) take priority over the environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GiB = 1024**3
MiB = 1024**2
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent.parent / "training" / "demo_bundle"
"""The committed demo bundle, found from any working directory (a path in the source tree, not an import)."""

StrList = Annotated[list[str], NoDecode]


def _split_list(value: Any) -> Any:
    """Accept a JSON list or comma-separated text for list settings given as strings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the server. Field names are part of the interface (see service/PIPELINE.md)."""

    model_config = SettingsConfigDict(env_prefix="SAMCLIP_", extra="ignore", validate_default=True)

    # --- model bundle and runtime -------------------------------------------------------------------------
    bundle: Path | None = Field(
        None,
        description="Model bundle directory written by `python -m model_export export` (manifest.json + "
        "ONNX graphs). None: use `default_bundle_dir` (the CLI exports a random-init tiny bundle there if empty).",
    )
    default_bundle_dir: Path = Field(
        DEFAULT_BUNDLE_DIR,
        description="Bundle served when `bundle` is not set: the committed demo model (trained on generated "
        "shapes by `python -m training.demo`). If it holds no manifest.json, the CLI exports a random-init `tiny` "
        "bundle there (needs the `export` extra); point `bundle` at your own bundle in production.",
    )
    backend: str = Field(
        "auto",
        description="Inference backend: auto (a GPU backend when a usable NVIDIA GPU is visible, else OpenVINO when "
        "installed, else ONNX Runtime; then the best variant whose parity passed), or onnxruntime, openvino, "
        "tensorrt, torch (aliases onnxruntime-int8, ort-cuda, torch-cuda). /info says what was chosen and why.",
    )
    providers: StrList = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in priority order, e.g. CUDAExecutionProvider,CPUExecutionProvider.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="cuda: the chosen backend must run on a GPU, else loading fails (live, not ready); "
        "cpu: never pick a GPU backend; auto: whatever the backend choice gives.",
    )
    cpus: int = Field(
        0,
        ge=0,
        description="CPUs to size thread pools and decode slots for; 0 = the affinity mask capped by the cgroup "
        "CPU quota. The Helm chart sets it from the pod's CPU request (downward API).",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="Threads inside one op; 0 = `cpus` (or the CPUs this process may use)."
    )
    inter_op_threads: int = Field(1, ge=0, description="Threads across independent ops.")
    warmup: bool = Field(True, description="Run every graph once at start before /readyz turns 200.")

    # --- backend tuning (optional; each is read only by the backend it names) ------------------------------
    precision: str | None = Field(
        None, description="GPU backends: auto | bf16 | fp16 | fp32 (None = the backend's default)."
    )
    variant: str | None = Field(
        None, description="Reduced-precision graph variant from manifest['variants'] (e.g. int8); auto/none."
    )
    cuda_device: int = Field(0, ge=0, description="CUDA device index for GPU backends.")
    torch_device: str | None = Field(None, description="torch backend device (cuda, cuda:1, cpu).")
    openvino_hint: str = Field("LATENCY", description="OpenVINO performance hint: LATENCY | THROUGHPUT.")
    openvino_num_streams: int = Field(0, ge=0, description="OpenVINO streams; 0 = plugin default.")
    openvino_cache_dir: Path | None = Field(None, description="OpenVINO compiled-model cache directory.")
    openvino_precision: str = Field(
        "auto", description="OpenVINO inference precision: auto | bf16 | f16 | f32."
    )
    openvino_graph_precision: dict[str, str] = Field(
        default_factory=dict, description='Per-graph OpenVINO precision, JSON e.g. {"sam_decoder": "f32"}.'
    )
    openvino_decoder_shapes: int = Field(
        8,
        ge=0,
        description="OpenVINO: static box/point-only SAM decoder models kept, one per (prompts, points) shape "
        "(compiled on first sight, ~0.2 s; calls with mask prompts use the dynamic model); 0 = off.",
    )
    decoder_variant: str = Field(
        "auto",
        description="SAM decoder graph: auto (the bundle's best passing decoder variant for the backend's runtime, "
        "e.g. `fused`), none (the graph `variant` gives), or a variant name. Independent of `variant`.",
    )

    # --- batching, queueing, deadlines ---------------------------------------------------------------------
    max_batch_size: int = Field(4, ge=1, description="Most images in one encoder batch.")
    max_batch_wait_ms: float = Field(10, ge=0, description="How long the batcher waits to fill a batch.")
    queue_size: int = Field(
        32, ge=1, description="Encoder queue bound; a full queue answers 429 + Retry-After."
    )
    max_concurrent_decodes: int = Field(
        0,
        ge=0,
        description="Most images decoded + preprocessed at once (0 = usable CPUs). New images wait for a slot "
        "holding an encoder-queue place, so waiting counts against queue_size (429 when full, before decode).",
    )
    request_timeout_s: float = Field(
        60, gt=0, description="Per-request deadline; a request still queued when it passes gets 504."
    )

    # --- caches ---------------------------------------------------------------------------------------------
    cache_bytes: int | None = Field(
        None,
        ge=0,
        description="Byte bound of the in-process image-embedding LRU; None = min(2 GiB, cache_memory_fraction x "
        "the memory limit).",
    )
    cache_memory_fraction: float = Field(
        0.4, gt=0, le=0.9, description="Share of the memory limit the embedding cache may use by default."
    )
    memory_limit_bytes: int = Field(
        0, ge=0, description="Memory limit of this process; 0 = cgroup memory.max (none: 2 GiB cache)."
    )
    postprocess: Literal["fast", "plain"] = Field(
        "fast",
        description="Mask post-processing: fast (decisions at original size without original-size float maps) or "
        "plain (segment_anything's original-size float logits; for comparison, e.g. benchmarks).",
    )
    malloc_tuning: bool = Field(
        True,
        description="glibc malloc for a server (one arena, freed memory kept for reuse; service/memory.py): no "
        "fresh page faults per mask. Applied by samclip-serve at start.",
    )
    cache_dtype: Literal["float32", "float16"] = Field(
        "float16",
        description="dtype of the cached SAM embedding and CLIP dense features (memory and shared tier): float16 "
        "halves an entry (ViT-B: 8.4 MB instead of 16.8 MB) within the parity gates; float32 keeps the encoder's.",
    )
    text_cache_entries: int = Field(
        4096, ge=0, description="Entries in the text-embedding LRU cache (0 = off)."
    )
    max_new_texts: int = Field(
        64,
        ge=1,
        description="Most texts/labels per request that are not cached yet (each runs 80 templates through the "
        "text tower); more -> 422 too_many_new_texts. A request's new texts also stop at its deadline (504).",
    )
    redis_url: SecretStr | None = Field(
        None,
        description="Shared embedding tier (redis://host:6379/0); unset = off. Entries are keyed by image_id + "
        "bundle fingerprint, never pickled; a failing or slow Redis degrades to the local cache + encode.",
    )
    redis_ttl_s: int = Field(3600, ge=1, description="Time to live of an entry in the shared tier.")
    redis_max_entry_bytes: int = Field(
        16 * MiB, ge=1, description="Largest entry written to the shared tier (larger ones stay local)."
    )
    redis_timeout_s: float = Field(
        0.25,
        gt=0,
        description="Connect / read / write timeout of one shared-tier socket operation (short: a slow Redis is "
        "a miss); a whole call gets 20x that.",
    )

    # --- input limits ---------------------------------------------------------------------------------------
    max_body_bytes: int = Field(32 * MiB, ge=1, description="Largest request body (413 above, also chunked).")
    max_form_fields: int = Field(
        16, ge=1, description="Most multipart/urlencoded fields per request (400 above)."
    )
    max_form_part_bytes: int = Field(
        1 * MiB, ge=1, description="Largest non-file form field, e.g. `prompts` JSON (400 above)."
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="Pixel cap (decompression bombs -> 422).")
    max_image_side: int = Field(16384, ge=1, description="Longest allowed image side (422 above).")
    allowed_formats: StrList = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"],
        description="Pillow format names accepted (others -> 415).",
    )
    max_prompts: int = Field(
        64, ge=1, description="Most prompts (points/box groups) per /segment/prompt call."
    )
    max_points_per_prompt: int = Field(32, ge=1, description="Most points in one prompt.")
    max_texts: int = Field(16, ge=1, description="Most `text` values per /segment call.")
    max_labels: int = Field(1000, ge=1, description="Most labels per /classify call.")
    max_text_chars: int = Field(300, ge=1, description="Longest single text / label in characters.")

    # --- refine and text-segment defaults -------------------------------------------------------------------
    refine_points: int = Field(8, ge=1, description="Default number of points sampled by /segment/refine.")
    refine_seed: int = Field(0, description="Default RNG seed for /segment/refine point sampling.")
    background_prompts: StrList = Field(
        default_factory=lambda: ["background"],
        description="Texts added as background classes in /segment?text= (a pixel is background when a "
        "background prompt scores highest).",
    )

    # --- segment everything and text instances ----------------------------------------------------------------
    everything_points_per_side: int = Field(
        32, ge=1, description="Default point grid side of /segment/everything (n x n points; SAM uses 32)."
    )
    max_points_per_side: int = Field(64, ge=1, description="Largest `points_per_side` a request may ask for.")
    points_per_batch: int = Field(
        64, ge=1, description="Grid points per SAM decoder call in /segment/everything (one call, K prompts)."
    )
    max_everything_masks: int = Field(
        256, ge=1, description="Largest `max_masks` of /segment/everything (its default is min(100, this))."
    )
    instance_min_area: int = Field(
        64, ge=0, description="Default `min_area` (pixels) of a text component in /segment?instances=true."
    )
    max_instances: int = Field(
        32, ge=1, description="Largest (and default) `max_instances` per text in /segment?instances=true."
    )

    # --- HTTP server ----------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address (0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="Bind port.")
    workers: int = Field(1, ge=1, description="Uvicorn worker processes (graceful drain needs 1).")
    api_key: SecretStr | None = Field(
        None,
        description="Optional API key. When set, every route except /healthz, /readyz, /metrics and the docs "
        "needs `Authorization: Bearer KEY` or `X-API-Key: KEY` (401 otherwise).",
    )
    drain_timeout_s: float = Field(
        25, gt=0, description="On SIGTERM: longest wait for in-flight requests before the process exits."
    )
    cors_origins: StrList = Field(default_factory=list, description="Allowed CORS origins; empty = no CORS.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool = Field(False, description="One JSON object per log line (for log shippers).")

    @field_validator("providers", "allowed_formats", "background_prompts", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_formats")
    @classmethod
    def _upper_formats(cls, value: list[str]) -> list[str]:
        return [item.upper() for item in value]

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def usable_cpus(self) -> int:
        """`cpus` when set, else the affinity mask capped by the cgroup CPU quota."""
        from service.runtime.cpus import available_cpus

        return self.cpus if self.cpus > 0 else available_cpus()

    def memory_limit(self) -> int | None:
        """`memory_limit_bytes` when set, else the cgroup v2 memory.max (None when unlimited or unknown)."""
        if self.memory_limit_bytes > 0:
            return self.memory_limit_bytes
        try:
            text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def effective_cache_bytes(self) -> int:
        """`cache_bytes` when set, else min(2 GiB, cache_memory_fraction x memory limit)."""
        if self.cache_bytes is not None:
            return self.cache_bytes
        limit = self.memory_limit()
        return 2 * GiB if limit is None else min(2 * GiB, int(limit * self.cache_memory_fraction))

    def resolved_bundle(self) -> Path:
        """The bundle directory to serve: `bundle` if set, else `default_bundle_dir`."""
        return self.bundle if self.bundle is not None else self.default_bundle_dir

    def summary(self) -> dict[str, Any]:
        """Settings for /info: secrets masked (only whether an API key is set)."""
        data = self.model_dump(mode="json", exclude={"api_key", "redis_url"})
        data["api_key_set"] = self.api_key is not None
        data["redis_url_set"] = self.redis_url is not None
        return data
