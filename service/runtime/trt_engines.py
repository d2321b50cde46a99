"""TensorRT engine records in the bundle manifest: naming, compatibility and selection (pure Python).

Shared by `model_export.trt_build` (writes records) and `service.runtime.tensorrt` (reads them). Needs neither
TensorRT nor a GPU, so every rule here is unit-tested on CPU.

A TensorRT engine only runs on the GPU architecture (compute capability) and the exact TensorRT version that
built it. Files are named `<graph>.sm<major><minor>.trt<version>.<precision>.engine`, e.g.
`encoder.sm90.trt10.3.0.fp16.engine`, and `manifest["engines"]` is a list of records:

    {"graph": "encoder", "file": "encoder.sm90.trt10.3.0.fp16.engine", "sha256": "...",
     "compute_capability": [9, 0], "device_name": "NVIDIA H200", "tensorrt": "10.3.0", "precision": "fp16",
     "profiles": {"image": {"min": [1, 3, 1024, 1024], "opt": [...], "max": [...]}},
     "fp32_layers": 123, "outputs": ["image_embeddings", "patch_tokens"], "built_at": "ISO-8601 UTC"}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

GRAPHS: tuple[str, ...] = ("encoder", "clip_head", "text_encoder", "sam_decoder")
PRECISIONS: tuple[str, ...] = ("fp16", "fp32")


class EngineMismatch(ValueError):
    """The bundle's engines cannot run on this GPU / TensorRT (or are missing). The message says why and
    how to fix it (rebuild with `python -m model_export build-trt`)."""


def sm_tag(compute_capability: Iterable[int]) -> str:
    """(9, 0) -> "sm90"."""
    major, minor = (int(v) for v in compute_capability)
    return f"sm{major}{minor}"


def engine_filename(graph: str, compute_capability: Iterable[int], trt_version: str, precision: str) -> str:
    """`<graph>.sm<major><minor>.trt<version>.<precision>.engine`."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; expected one of {GRAPHS}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if not trt_version or any(c in trt_version for c in "/\\ "):
        raise ValueError(f"bad TensorRT version string {trt_version!r}")
    return f"{graph}.{sm_tag(compute_capability)}.trt{trt_version}.{precision}.engine"


def record_mismatch(
    record: dict[str, Any], compute_capability: Iterable[int], trt_version: str
) -> str | None:
    """Why `record` cannot run here (None when it can). Exact match on compute capability and TensorRT version:
    engines are not portable across GPU architectures or TensorRT releases."""
    here_cc = tuple(int(v) for v in compute_capability)
    built_cc = tuple(int(v) for v in record.get("compute_capability", ()))
    reasons = []
    if built_cc != here_cc:
        reasons.append(
            f"built for compute capability {'.'.join(map(str, built_cc)) or '?'} "
            f"({record.get('device_name', 'unknown GPU')}), this GPU is {'.'.join(map(str, here_cc))}"
        )
    if str(record.get("tensorrt")) != str(trt_version):
        reasons.append(
            f"built with TensorRT {record.get('tensorrt')}, this process has TensorRT {trt_version}"
        )
    return "; ".join(reasons) or None


def select_engines(
    manifest: dict[str, Any], precision: str, compute_capability: Iterable[int], trt_version: str
) -> dict[str, dict[str, Any]]:
    """One compatible record per graph for `precision`, or EngineMismatch naming every refused file."""
    cc = tuple(int(v) for v in compute_capability)
    records = [r for r in manifest.get("engines", []) if r.get("precision") == precision]
    fix = (
        f"rebuild on this machine: python -m model_export build-trt BUNDLE --precision {precision} "
        f"(this GPU: {sm_tag(cc)}, TensorRT {trt_version})"
    )
    if not records:
        have = sorted({r.get("precision", "?") for r in manifest.get("engines", [])})
        raise EngineMismatch(
            f"the bundle has no {precision} TensorRT engines (has: {', '.join(have) or 'none'}); {fix}"
        )
    chosen: dict[str, dict[str, Any]] = {}
    refused: list[str] = []
    for graph in GRAPHS:
        for rec in (r for r in records if r.get("graph") == graph):
            why = record_mismatch(rec, cc, trt_version)
            if why is None:
                chosen[graph] = rec
                break
            refused.append(f"{rec.get('file')}: {why}")
    missing = [g for g in GRAPHS if g not in chosen]
    if missing:
        detail = "; ".join(refused) if refused else "no engine recorded"
        raise EngineMismatch(f"refusing TensorRT engines for {', '.join(missing)} — {detail}. {fix}")
    return chosen


def upsert_engine_records(manifest: dict[str, Any], new: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Return a copy of `manifest` whose "engines" list holds `new`, replacing records of the same
    (graph, compute capability, TensorRT version, precision); records for other GPUs are kept."""

    def key(r: dict[str, Any]) -> tuple:
        return (r["graph"], tuple(r["compute_capability"]), str(r["tensorrt"]), r["precision"])

    new = list(new)
    replaced = {key(r) for r in new}
    kept = [r for r in manifest.get("engines", []) if key(r) not in replaced]
    out = dict(manifest)
    out["engines"] = sorted(kept + new, key=lambda r: (r["precision"], r["graph"], r["file"]))
    return out
