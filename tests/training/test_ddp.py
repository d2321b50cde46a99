"""DDP with 2 CPU processes (gloo) under torchrun for a few steps."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from model_export.checkpoint import load_samclip

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(test_config, tmp_path):
    cfg = test_config.replace(stages={"2": dataclasses.replace(test_config.stage("2"), steps=3)})
    (tmp_path / "cfg.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_port()}",
        "-m",
        "training.train",
        "--config",
        str(tmp_path / "cfg.json"),
        "--stage",
        "2",
        "--out",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "step" in r] == [0, 1, 2]
    assert all({"clip", "sam", "dense"} <= set(r) for r in records if "step" in r)
    assert records[-1] == {"stage": "2", "done": True, "world": 2, "params_in_sync": True}
    model, meta = load_samclip(tmp_path / "out" / "samclip.safetensors")
    assert meta["extra"]["stage"] == "2"
