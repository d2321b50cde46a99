"""Fixtures for the service tests: settings, and a started Engine on the real tiny bundle."""

from __future__ import annotations

from typing import Any

import pytest

from service.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def settings_factory():
    """Settings(**overrides), for tests that need non-default limits."""
    return Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_engine(tiny_bundle):
    """Async factory: a started Engine over the real tiny bundle and ONNX Runtime (tests await engine.stop()).
    `wrap(backend)` may wrap the backend (e.g. support.SlowEncoder)."""
    from service.bundle import Bundle
    from service.engine import Engine
    from service.metrics import Metrics
    from service.runtime.registry import create_backend

    async def factory(wrap: Any = None, bundle_path: Any = None, **overrides: Any) -> Engine:
        settings = Settings(bundle=bundle_path or tiny_bundle, **overrides)
        bundle = Bundle.load(settings.bundle)
        metrics = Metrics()
        backend = create_backend("onnxruntime", bundle, settings, metrics)
        engine = Engine(bundle, wrap(backend) if wrap else backend, settings, metrics)
        await engine.start()
        return engine

    return factory
