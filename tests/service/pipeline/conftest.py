"""Fixtures for the pipeline tests: settings with the documented defaults (service/settings.py when present)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

DEFAULTS: dict[str, Any] = {
    "bundle": None,
    "backend": "onnxruntime",
    "providers": ["CPUExecutionProvider"],
    "intra_op_threads": 0,
    "inter_op_threads": 1,
    "max_batch_size": 4,
    "max_batch_wait_ms": 10.0,
    "queue_size": 32,
    "request_timeout_s": 60.0,
    "cache_bytes": 2 * 1024**3,
    "text_cache_entries": 4096,
    "max_image_pixels": 40_000_000,
    "max_image_side": 16384,
    "allowed_formats": ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"],
    "max_prompts": 64,
    "max_points_per_prompt": 32,
    "max_texts": 16,
    "max_labels": 1000,
    "refine_points": 8,
    "refine_seed": 0,
    "background_prompts": ["background"],
    "warmup": True,
}


def make_settings(**overrides: Any) -> Any:
    """service.settings.Settings(**overrides) if that module exists, else a namespace with the same fields."""
    try:
        from service.settings import Settings
    except ImportError:
        return SimpleNamespace(**{**DEFAULTS, **overrides})
    return Settings(**overrides)


@pytest.fixture
def settings() -> Any:
    return make_settings()


@pytest.fixture
def settings_factory():
    """make_settings, for tests that need non-default limits."""
    return make_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
