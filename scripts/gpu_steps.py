"""Step runner and time budget shared by the scripts/gpu_check*.py modules."""

from __future__ import annotations

import time
import traceback
from typing import Any


class Budget:
    """Wall-clock budget: `left()` seconds remain; `need(s)` raises Skip when fewer than s remain."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def need(self, seconds: float) -> None:
        if self.left() < seconds:
            raise Skip(f"time budget: {self.left():.0f} s left, step needs ~{seconds:.0f} s")


class Skip(Exception):
    """A step not run, with the reason."""


def step(report: dict, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one step; record {"status", "seconds", "result" | "error" | "reason"} under report["steps"]."""
    start = time.perf_counter()
    entry: dict[str, Any] = {}
    try:
        result = fn(*args, **kwargs)
        entry = {"status": "ok", "result": result}
    except Skip as exc:
        result, entry = None, {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - every failure is reported, the run goes on
        result = None
        entry = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "trace": traceback.format_exc(limit=4)[-1500:],
        }
    entry["seconds"] = round(time.perf_counter() - start, 2)
    report["steps"][name] = entry
    print(
        f"[{entry['seconds']:7.1f}s] {name}: {entry['status']} {entry.get('reason') or entry.get('error') or ''}",
        flush=True,
    )
    return result
