"""TensorRT engine records in the manifest: naming, compatibility and selection (pure Python).

Written by `python -m model_export build-trt`, read by the service's TensorRT backend. A TensorRT engine only runs
on the GPU architecture (compute capability) and the exact TensorRT version that built it. Files are named
`<graph>.sm<major><minor>.trt<version>.<precision>.engine`, e.g. `encoder.sm90.trt10.3.0.fp16.engine`, and
`manifest.engines` lists one `EngineRecord` per file (graph, file, sha256, compute_capability, device_name,
tensorrt, precision, profiles, fp32_layers, outputs, build_s, built_at).
"""

from __future__ import annotations

from collections.abc import Iterable

from samclip_bundle.graphs import GRAPHS, check_graph
from samclip_bundle.manifest import EngineRecord, Manifest

PRECISIONS: tuple[str, ...] = ("fp16", "fp32")


class EngineMismatch(ValueError):
    """The bundle's engines cannot run on this GPU / TensorRT (or are missing). The message says why and how
    to fix it (rebuild with `python -m model_export build-trt`)."""


def sm_tag(compute_capability: Iterable[int]) -> str:
    """(9, 0) -> "sm90"."""
    major, minor = (int(v) for v in compute_capability)
    return f"sm{major}{minor}"


def engine_filename(graph: str, compute_capability: Iterable[int], trt_version: str, precision: str) -> str:
    """`<graph>.sm<major><minor>.trt<version>.<precision>.engine`."""
    check_graph(graph)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if not trt_version or any(c in trt_version for c in "/\\ "):
        raise ValueError(f"bad TensorRT version string {trt_version!r}")
    return f"{graph}.{sm_tag(compute_capability)}.trt{trt_version}.{precision}.engine"


def record_mismatch(record: EngineRecord, compute_capability: Iterable[int], trt_version: str) -> str | None:
    """Why `record` cannot run here (None when it can). Exact match on compute capability and TensorRT
    version: engines are not portable across GPU architectures or TensorRT releases."""
    here_cc = tuple(int(v) for v in compute_capability)
    reasons = []
    if tuple(record.compute_capability) != here_cc:
        reasons.append(
            f"built for compute capability {'.'.join(map(str, record.compute_capability))} "
            f"({record.device_name}), this GPU is {'.'.join(map(str, here_cc))}"
        )
    if record.tensorrt != str(trt_version):
        reasons.append(f"built with TensorRT {record.tensorrt}, this process has TensorRT {trt_version}")
    return "; ".join(reasons) or None


def select_engines(
    manifest: Manifest, precision: str, compute_capability: Iterable[int], trt_version: str
) -> dict[str, EngineRecord]:
    """One compatible record per graph for `precision`, or EngineMismatch naming every refused file."""
    cc = tuple(int(v) for v in compute_capability)
    records = [r for r in manifest.engines if r.precision == precision]
    fix = (
        f"rebuild on this machine: python -m model_export build-trt BUNDLE --precision {precision} "
        f"(this GPU: {sm_tag(cc)}, TensorRT {trt_version})"
    )
    if not records:
        have = sorted({r.precision for r in manifest.engines})
        raise EngineMismatch(
            f"the bundle has no {precision} TensorRT engines (has: {', '.join(have) or 'none'}); {fix}"
        )
    chosen: dict[str, EngineRecord] = {}
    refused: list[str] = []
    for graph in GRAPHS:
        for rec in (r for r in records if r.graph == graph):
            why = record_mismatch(rec, cc, trt_version)
            if why is None:
                chosen[graph] = rec
                break
            refused.append(f"{rec.file}: {why}")
    missing = [g for g in GRAPHS if g not in chosen]
    if missing:
        detail = "; ".join(refused) if refused else "no engine recorded"
        raise EngineMismatch(f"refusing TensorRT engines for {', '.join(missing)} — {detail}. {fix}")
    return chosen


def upsert_engine_records(manifest: Manifest, new: Iterable[EngineRecord]) -> None:
    """Put `new` into manifest.engines, replacing records of the same (graph, compute capability, TensorRT
    version, precision); records for other GPUs are kept. Sorted by precision, graph, file."""

    def key(r: EngineRecord) -> tuple:
        return (r.graph, tuple(r.compute_capability), r.tensorrt, r.precision)

    new = list(new)
    replaced = {key(r) for r in new}
    kept = [r for r in manifest.engines if key(r) not in replaced]
    manifest.engines = sorted(kept + new, key=lambda r: (r.precision, r.graph, r.file))
