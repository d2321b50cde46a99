"""Smoke test of benchmarks/decoder_profile.py on the tiny bundle with its fused decoder variant: one run gives
FLOPs and per-op times of both graphs. Nothing is asserted on speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "decoder_profile.py"
pytest.importorskip("openvino")


@pytest.mark.parametrize("extra", [[], ["--mask-path"], ["--runtime", "onnxruntime", "--prompts", "2"]])
def test_profile_counts_and_times_every_graph(fused_tiny: Path, tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "profile.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--bundle",
        str(fused_tiny),
        "--repeats",
        "2",
        "--json",
        str(out),
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["graphs"]) == {"plain", "fused"}
    for label, graph in result["graphs"].items():
        flops, times = graph["flops"], graph["time"]
        assert flops["macs"] > 0 and flops["elementwise"] > 0 and flops["top_ops"][0]["macs"] > 0
        assert abs(sum(s["macs"] for s in flops["scopes"].values()) - flops["macs"]) == 0
        assert times["wall_ms"] > 0 and times["nodes_ms"] > 0 and times["top_nodes"]
        assert f"== {label}:" in proc.stdout
    # the mask-prompt branch is folded away unless --mask-path (or ORT, which runs the graph as it is)
    mask_scope = [s for s in result["graphs"]["plain"]["flops"]["scopes"] if s.startswith("mask_downscaling")]
    assert bool(mask_scope) == bool(extra)
