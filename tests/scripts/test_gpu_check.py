"""scripts/gpu_check.py end to end as a CPU dry run (--allow-cpu: the torch backend on the CPU, tiny bundle):
every step runs, the gates pass, the JSON/Markdown reports carry the figures, and GPU backends that are not
available are reported as skipped with their reason. The real run needs a GPU machine (deploy/GPU.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")

from tests.service.runtime.gpu_fixtures import tiny_bundle_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_dry_run_writes_reports(request, tmp_path_factory, tmp_path):
    gpu_check = _load_script()
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run scripts/gpu_check.sh instead of the CPU dry run")
    bundle = tiny_bundle_dir(request, tmp_path_factory)
    out = tmp_path / "out"
    rc = gpu_check.main(
        [
            "--bundle",
            str(bundle),
            "--allow-cpu",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "w"),
            "--encoder-batches",
            "1,2",
            "--decoder-prompts",
            "1,3",
            "--samples",
            "1",
            "--e2e-requests",
            "2",
            "--e2e-new-images",
            "1",
            "--budget-s",
            "400",
        ]
    )
    assert rc == 0
    (report_path,) = out.glob("gpu-*-cpu.json")
    report = json.loads(report_path.read_text())
    steps = report["steps"]
    assert steps["tensorrt"]["status"] == "skipped" and "TensorRT" in steps["tensorrt"]["reason"]
    assert steps["ort-cuda"]["status"] == "skipped"
    assert steps["torch-cuda.gates"]["result"]["passed"] is True
    bench = steps["torch-cuda.bench"]["result"]
    assert set(bench["encoder"]) == {"batch_1", "batch_2"} and bench["encoder"]["batch_2"]["images_per_s"] > 0
    assert set(bench["decoder"]) == {"prompts_1", "prompts_3"}
    e2e = steps["torch-cuda.e2e"]["result"]
    assert e2e["segment_prompt_cached_ms_median"] > 0 and e2e["segment_refine_new_image_ms_median"] > 0
    assert report["summary"] == {"gates_run": 1, "gates_passed": 1, "failed_steps": []}
    assert steps["cpu_reference.bench"]["result"]["encoder_batch_1_ms"] > 0
    ratios = report["ratios"]["torch-cuda"]
    assert ratios["encoder_b1_speedup_vs_cpu_fp32"] > 0 and ratios["refine_new_over_encoder_b1"] > 0
    md = report_path.with_suffix(".md").read_text()
    assert "| torch-cuda | bf16 | pass |" in md
    assert not list(
        (ROOT / "benchmarks").glob(f"gpu-{report['date']}-cpu.*")
    )  # dry runs stay out of benchmarks/
