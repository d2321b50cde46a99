"""Settings: one pydantic-settings class, SAMCLIP_ env prefix, list parsing, secrets masked, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import GiB, MiB, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SAMCLIP_"):
            monkeypatch.delenv(key)


def test_defaults_match_the_service_api() -> None:
    s = Settings()
    assert s.bundle is None and s.backend == "auto" and s.providers == ["CPUExecutionProvider"]
    assert (s.max_batch_size, s.max_batch_wait_ms, s.queue_size, s.request_timeout_s) == (4, 10, 32, 60)
    assert s.cache_bytes is None and s.max_body_bytes == 32 * MiB and s.redis_url is None
    assert (s.max_image_pixels, s.max_image_side, s.max_prompts, s.max_texts) == (40_000_000, 16384, 64, 16)
    assert s.allowed_formats == ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"]
    assert s.background_prompts == ["background"] and s.warmup is True and s.api_key is None


def test_env_prefix_and_list_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMCLIP_BUNDLE", "/models/vit_b")
    monkeypatch.setenv("SAMCLIP_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("SAMCLIP_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("SAMCLIP_ALLOWED_FORMATS", '["png", "jpeg"]')
    monkeypatch.setenv("SAMCLIP_LOG_LEVEL", "debug")
    monkeypatch.setenv("SAMCLIP_WARMUP", "false")
    s = Settings()
    assert s.bundle == Path("/models/vit_b") and s.max_batch_size == 8 and s.warmup is False
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.allowed_formats == ["PNG", "JPEG"] and s.log_level == "DEBUG"


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMCLIP_PORT", "9000")
    assert Settings().port == 9000
    assert Settings(port=9100).port == 9100


def test_api_key_is_secret_in_repr_and_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMCLIP_API_KEY", "s3cret-key")
    s = Settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(s) and "s3cret-key" not in str(s.summary())
    assert s.summary()["api_key_set"] is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAMCLIP_MAX_BATCH_SIZE", "0"),
        ("SAMCLIP_PORT", "70000"),
        ("SAMCLIP_LOG_LEVEL", "LOUD"),
        ("SAMCLIP_QUEUE_SIZE", "x"),
    ],
)
def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_resolved_bundle_prefers_bundle_over_default(tmp_path: Path) -> None:
    assert Settings(default_bundle_dir=tmp_path).resolved_bundle() == tmp_path
    assert Settings(bundle=tmp_path / "b", default_bundle_dir=tmp_path).resolved_bundle() == tmp_path / "b"


def test_every_field_is_documented() -> None:
    missing = [name for name, f in Settings.model_fields.items() if not f.description]
    assert missing == []


def test_default_bundle_is_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = Settings().resolved_bundle()
    assert bundle.is_absolute() and (bundle / "manifest.json").is_file()


def test_cache_and_threads_are_sized_from_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(cache_bytes=123).effective_cache_bytes() == 123
    assert Settings(memory_limit_bytes=4 * GiB).effective_cache_bytes() == int(0.4 * 4 * GiB)
    assert Settings(memory_limit_bytes=64 * GiB).effective_cache_bytes() == 2 * GiB  # capped
    assert Settings(cpus=3).usable_cpus() == 3
    assert 1 <= Settings().usable_cpus() <= (os.cpu_count() or 1)
    monkeypatch.setenv("SAMCLIP_CPUS", "5")
    assert Settings().usable_cpus() == 5
