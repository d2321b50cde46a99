"""``python -m training.demo`` end to end at --scale 0.01 (data, teachers, merge under torchrun, export, eval,
gates through the service, report): the one command that rebuilds the demo bundle keeps working."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from samclip_bundle.manifest import Manifest

pytestmark = pytest.mark.slow


def test_demo_smoke_run_writes_bundle_report_and_gates(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "training.demo", "--out", str(out), "--scale", "0.01"]
    subprocess.run(cmd, check=True, timeout=1200, capture_output=True)
    assert Manifest.exists(out / "bundle")
    for stage in ("1", "2", "3"):
        log = (out / "merge" / f"stage{stage}" / "log.jsonl").read_text().splitlines()
        assert json.loads(log[-1]) == {"stage": stage, "done": True, "world": 2, "params_in_sync": True}
    report = json.loads((out / "report.json").read_text())
    assert [c["alpha"] for c in report["wise_ft"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    gates = report["gates"]
    assert len(gates["segment_ious"]) == 10 and gates["classify_n"] == 30
    assert all(0.0 <= x <= 1.0 for x in gates["segment_ious"])
    assert set(report["timing"]["phases"]) == {"data", "teachers", "merge", "export", "eval", "gates"}
    text = (out / "REPORT.md").read_text()
    assert "Issue-7 gates" in text and "Wise-FT" in text
