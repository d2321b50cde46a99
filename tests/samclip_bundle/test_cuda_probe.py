"""samclip_bundle.cuda_probe against a fake CUDA driver library (no GPU here) and the real machine."""

from __future__ import annotations

from samclip_bundle.cuda_probe import GpuInfo, GpuProbe, visible_gpus
from tests.samclip_bundle.bundle_fakes import FakeCudaDriver


def test_lists_devices_with_compute_capability() -> None:
    gpus = visible_gpus(FakeCudaDriver([("NVIDIA H200", (9, 0)), ("NVIDIA L4", (8, 9))]))
    assert gpus == [GpuInfo(0, "NVIDIA H200", (9, 0)), GpuInfo(1, "NVIDIA L4", (8, 9))]


def test_driver_without_device_gives_reason() -> None:
    probe = GpuProbe(FakeCudaDriver([], init_error=100))
    assert probe.gpus() == [] and "CUDA driver error 100" in probe.last_reason
    probe = GpuProbe(FakeCudaDriver([]))
    assert probe.gpus() == [] and "sees no device" in probe.last_reason


def test_this_machine_answers_without_raising() -> None:
    probe = GpuProbe()
    gpus = probe.gpus()
    assert all(g.compute_capability[0] >= 3 for g in gpus)
    assert gpus or probe.last_reason
