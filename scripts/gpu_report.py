"""JSON + Markdown reports of scripts/gpu_check.py (benchmarks/gpu-<date>-<gpu>.{json,md})."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _result(steps: dict[str, Any], name: str) -> dict[str, Any]:
    entry = steps.get(name) or {}
    return entry.get("result") or {} if entry.get("status") == "ok" else {}


def summary_table(report: dict[str, Any]) -> list[str]:
    """One row per backend that loaded: precision, gates, encoder images/s, decoder ms/prompt, e2e ms."""
    steps, args = report["steps"], report["args"]
    head = ["backend", "precision", "gates", "mask IoU", "CLIP img cos"]
    head += [f"enc img/s b{b}" for b in args["encoder_batches"]]
    head += [f"dec ms/prompt k{k}" for k in args["decoder_prompts"]]
    head += ["/segment/prompt cached ms", "/segment/refine new ms"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ("tensorrt", "ort-cuda", "torch-cuda"):
        load = _result(steps, f"{name}.load")
        if not load:
            continue
        gates, bench, e2e = (_result(steps, f"{name}.{s}") for s in ("gates", "bench", "e2e"))
        cells = [
            name,
            load["info"]["precision"],
            {True: "pass", False: "FAIL"}.get(gates.get("passed"), "-"),
            gates.get("decoder_mask_iou", "-"),
            gates.get("clip_image_cosine", "-"),
        ]
        cells += [
            bench.get("encoder", {}).get(f"batch_{b}", {}).get("images_per_s", "-")
            for b in args["encoder_batches"]
        ]
        cells += [
            bench.get("decoder", {}).get(f"prompts_{k}", {}).get("ms_per_prompt", "-")
            for k in args["decoder_prompts"]
        ]
        cells += [
            e2e.get("segment_prompt_cached_ms_median", "-"),
            e2e.get("segment_refine_new_image_ms_median", "-"),
        ]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return rows


def ratios(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per backend, from figures of this one run: encoder batch-1 and decoder (16 prompts) speed-up over fp32
    ONNX Runtime on this machine's CPUs, and /segment/refine on a new image over one encoder batch-1 call
    (one encoder pass per request => close to 1 plus HTTP, decode and post-processing)."""
    steps, out = report["steps"], {}
    cpu = _result(steps, "cpu_reference.bench")
    for name in ("tensorrt", "ort-cuda", "torch-cuda"):
        bench, e2e = _result(steps, f"{name}.bench"), _result(steps, f"{name}.e2e")
        enc_ms = bench.get("encoder", {}).get("batch_1", {}).get("ms_per_call")
        dec_ms = bench.get("decoder", {}).get("prompts_16", {}).get("ms_per_prompt")
        entry = {}
        if enc_ms and cpu.get("encoder_batch_1_ms"):
            entry["encoder_b1_speedup_vs_cpu_fp32"] = round(cpu["encoder_batch_1_ms"] / enc_ms, 2)
        if dec_ms and cpu.get("decoder_ms_per_prompt_16"):
            entry["decoder_k16_speedup_vs_cpu_fp32"] = round(cpu["decoder_ms_per_prompt_16"] / dec_ms, 2)
        if enc_ms and e2e.get("segment_refine_new_image_ms_median"):
            entry["refine_new_over_encoder_b1"] = round(e2e["segment_refine_new_image_ms_median"] / enc_ms, 2)
        if entry:
            out[name] = entry
    return out


def markdown(report: dict[str, Any]) -> str:
    env, steps = report["environment"], report["steps"]
    lines = [
        f"# GPU check — {env.get('gpu', 'no GPU')} — {report['date']}",
        "",
        f"- torch {env['torch']} (CUDA {env['torch_cuda']}), onnxruntime {env['onnxruntime']} "
        f"(providers: {', '.join(env['onnxruntime_providers'])}), TensorRT {env['tensorrt']}",
        f"- compute capability {env.get('compute_capability', '-')}, bundle: {json.dumps(report.get('bundle'))}",
        f"- total {report['seconds']} s; every figure below was measured in this one run",
        "",
        *summary_table(report),
        "",
        f"Ratios (same run): `{json.dumps(report.get('ratios', {}))}`",
        "",
        "| step | status | seconds | note |",
        "|---|---|---|---|",
    ]
    for name, entry in steps.items():
        note = entry.get("reason") or entry.get("error") or ""
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {note[:160]} |")
    for name, entry in steps.items():
        res = entry.get("result")
        if entry["status"] != "ok" or not isinstance(res, dict) or name.endswith((".load", "environment")):
            continue
        lines += ["", f"## {name}", "", "```json", json.dumps(res, indent=1)[:4000], "```"]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: Path) -> list[str]:
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", report["environment"].get("gpu", "cpu")).strip("-").lower()
    stem = f"gpu-{report['date']}-{gpu}"
    text, md = json.dumps(report, indent=2, default=str), markdown(report)
    written = []
    folders = [out_dir] + ([ROOT / "benchmarks"] if report["environment"].get("cuda_available") else [])
    for folder in folders:  # a CPU dry run never lands in benchmarks/
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(text)
        (folder / f"{stem}.md").write_text(md)
        written += [str(folder / f"{stem}.json"), str(folder / f"{stem}.md")]
    return written
