"""Wise-FT interpolation at alpha 0, 1 and 0.5."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from model_export.build import build_model
from model_export.checkpoint import CheckpointError, load_samclip, save_samclip
from training.interpolate import interpolate, interpolate_state


def test_interpolate_endpoints_and_midpoint(tmp_path):
    a, b = build_model("demo", seed=0), build_model("demo", seed=1)
    pa, pb = save_samclip(a, tmp_path / "a.safetensors"), save_samclip(b, tmp_path / "b.safetensors")
    sa, sb = a.state_dict(), b.state_dict()
    for alpha, expect in ((0.0, sa), (1.0, sb)):
        got = load_samclip(interpolate(pa, pb, alpha, tmp_path / f"{alpha}.safetensors"))[0].state_dict()
        assert all(torch.equal(got[k], expect[k]) for k in expect)
    out = tmp_path / "half.safetensors"
    subprocess.run(
        [sys.executable, "-m", "training.interpolate", str(pa), str(pb), "--alpha", "0.5", "--out", str(out)],
        check=True,
    )
    half, meta = load_samclip(out)
    assert meta["extra"]["wise_ft"]["alpha"] == 0.5
    for k, v in half.state_dict().items():
        torch.testing.assert_close(v, (sa[k] + sb[k]) / 2, rtol=0, atol=1e-6)


def test_interpolate_rejects_mismatched_keys():
    with pytest.raises(CheckpointError):
        interpolate_state({"x": torch.zeros(2)}, {"y": torch.zeros(2)}, 0.5)
    with pytest.raises(CheckpointError):
        interpolate_state({"x": torch.zeros(2)}, {"x": torch.zeros(3)}, 0.5)
