"""Which NVIDIA GPUs the CUDA driver makes visible, through the driver library with ctypes (stdlib only).

`visible_gpus()` loads `libcuda.so.1` (`nvcuda.dll` on Windows), calls cuInit / cuDeviceGetCount /
cuDeviceGetName / cuDeviceGetAttribute and returns one `GpuInfo` per device (CUDA_VISIBLE_DEVICES applies, as
the driver applies it). No driver, no device or any driver error -> [] with the reason in `last_reason`. Used to
name a TensorRT engine's GPU (`model_export build-trt`) and by the service's `backend=auto` resolution; needs
neither torch nor cuda-python, so it answers on any machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass
from typing import Any

_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}
_LIBRARIES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")


@dataclass(frozen=True)
class GpuInfo:
    """index: CUDA device ordinal; name: e.g. "NVIDIA H200"; compute_capability: (major, minor)."""

    index: int
    name: str
    compute_capability: tuple[int, int]


class GpuProbe:
    """Device query over a CUDA driver library object (ctypes CDLL; tests pass a fake with the same calls)."""

    def __init__(self, lib: Any | None = None) -> None:
        self.lib = lib
        self.last_reason = ""

    def _load(self) -> Any | None:
        if self.lib is not None:
            return self.lib
        for name in _LIBRARIES:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
        self.last_reason = "no NVIDIA driver library (libcuda) on this machine"
        return None

    def gpus(self) -> list[GpuInfo]:
        """Visible devices, [] when none (see `last_reason`)."""
        lib = self._load()
        if lib is None:
            return []
        count = ctypes.c_int(0)
        if (err := lib.cuInit(0)) != 0 or (err := lib.cuDeviceGetCount(ctypes.byref(count))) != 0:
            self.last_reason = f"the NVIDIA driver reports no usable device (CUDA driver error {err})"
            return []
        out = []
        for index in range(count.value):
            device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            calls = (
                lib.cuDeviceGet(ctypes.byref(device), index),
                lib.cuDeviceGetName(name, 256, device),
                lib.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device),
                lib.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device),
            )
            if any(calls):
                self.last_reason = f"CUDA device {index}: driver error {next(c for c in calls if c)}"
                continue
            text = name.value.decode(errors="replace")
            out.append(GpuInfo(index, text, (major.value, minor.value)))
        if not out and not self.last_reason:
            self.last_reason = "the NVIDIA driver sees no device (CUDA_VISIBLE_DEVICES?)"
        return out


def visible_gpus(lib: Any | None = None) -> list[GpuInfo]:
    """GPUs the CUDA driver makes visible to this process ([] without a driver or device)."""
    return GpuProbe(lib).gpus()
