"""Per-request stage timings, rendered as a `Server-Timing` header."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    """Accumulates milliseconds per stage (decode, queue, encoder, head, decoder, postprocess...)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.cache_hit: bool | None = None

    def add(self, stage: str, ms: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + ms

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, (time.perf_counter() - start) * 1000.0)

    def header(self) -> str:
        parts = [f"{name};dur={ms:.2f}" for name, ms in self.stages.items()]
        if self.cache_hit is not None:
            parts.append(f'cache;desc="{"hit" if self.cache_hit else "miss"}"')
        return ", ".join(parts)
