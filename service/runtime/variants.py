"""Which reduced-precision graph variant a backend runs (manifest["variants"], written by
`python -m model_export optimize`; see model_export/quantize.py for the entry layout).

Setting `variant`: "auto" (default) picks, per runtime, the passing variant with the lowest rank; "none" runs the
plain fp32 graphs; any other string names a variant. One name applies to every graph that has it (the parity
figures were measured with that variant's graphs together); graphs without it run their plain graph.
"""

from __future__ import annotations

from typing import Any


def auto_variant_name(manifest: dict[str, Any], runtime: str) -> str | None:
    """The variant "auto" picks for `runtime`: among manifest["variants"] entries listing `runtime` in
    `runtimes` whose parity passed, the one with the lowest `rank` (quantize.py: int8 with int8 attention 0,
    int8 1, bf16 2). One name for all graphs, because parity was measured with that variant's graphs together."""
    best: tuple[int, str] | None = None
    for entries in (manifest.get("variants") or {}).values():
        for entry in entries or []:
            runtimes = entry.get("runtimes") or [entry.get("runtime")]
            if runtime in runtimes and (entry.get("parity") or {}).get("passed"):
                candidate = (int(entry.get("rank", 10)), str(entry.get("name")))
                best = candidate if best is None or candidate < best else best
    return best[1] if best else None


def choose_variant(manifest: dict[str, Any], graph: str, wanted: str, runtime: str) -> dict[str, Any] | None:
    """The `manifest["variants"][graph]` entry to run for `runtime` ("openvino" / "onnxruntime"), or None for
    the plain fp32 graph. wanted: "none"; "auto" (see auto_variant_name); or a variant name."""
    name = auto_variant_name(manifest, runtime) if wanted == "auto" else wanted
    if name in (None, "none"):
        return None
    entries = (manifest.get("variants") or {}).get(graph) or []
    return next((e for e in entries if e.get("name") == name), None)
