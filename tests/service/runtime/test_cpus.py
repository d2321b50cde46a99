"""Thread defaults for containers: affinity mask and cgroup CPU quota (service/runtime/cpus.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.runtime import cpus


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_cpu_quota(tmp_path) == pytest.approx(1.5)
    assert cpus.available_cpus(tmp_path) == min(_affinity(), 2)  # 1.5 CPUs -> 2 threads
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cpus.available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_quota(tmp_path) is None
    assert cpus.available_cpus(tmp_path) == _affinity()


def test_cgroup_v1_quota_and_garbage(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpus.cgroup_cpu_quota(tmp_path) == 1.0
    assert cpus.available_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cpus.cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("not a number")
    assert cpus.cgroup_cpu_quota(tmp_path) is None


def test_resolve_threads(tmp_path: Path) -> None:
    assert cpus.resolve_threads(3, tmp_path) == 3
    assert cpus.resolve_threads(0, tmp_path) == _affinity()  # no cgroup files: the affinity mask
    assert cpus.resolve_threads(None) >= 1
