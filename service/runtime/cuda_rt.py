"""Thin CUDA runtime wrapper over cuda-python (`cuda.bindings.runtime`) for the native TensorRT backend.

Only what the backend needs: device probe (name, compute capability), device and pinned host allocations,
one non-blocking stream per worker, async copies and stream sync. No torch, no cupy. Every call checks the
returned `cudaError_t` and raises `BackendError` with CUDA's own message.

Pointers are plain Python ints (device addresses); a pinned host buffer is exposed as a numpy view of its
memory (`PinnedBuffer.view(shape, dtype)`), so numpy writes go straight into page-locked memory.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from samclip_bundle.cuda_probe import GpuInfo
from service.runtime.base import BackendError


def _import_cudart() -> Any:
    """Return the cuda-python runtime module (`cuda.bindings.runtime`, or the pre-12.6 `cuda.cudart`)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendError(
                "cuda-python is not installed (pip install 'samclip-serve[trt]'); the TensorRT backend needs it"
            ) from exc
    return cudart


class PinnedBuffer:
    """Page-locked host memory of `nbytes` bytes at address `ptr`."""

    def __init__(self, rt: CudaRuntime, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = rt.malloc_host(nbytes)
        self._rt = rt

    def view(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """A numpy array over the first prod(shape) * itemsize bytes (no copy)."""
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if n > self.nbytes:
            raise BackendError(f"pinned buffer too small: need {n} bytes, have {self.nbytes}")
        raw = (ctypes.c_byte * max(n, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dt, count=n // dt.itemsize).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self._rt.free_host(self.ptr)
            self.ptr = 0


class CudaRuntime:
    """cuda-python runtime calls with error checking. `cudart` can be injected (tests pass a fake)."""

    def __init__(self, device: int = 0, cudart: Any | None = None) -> None:
        self.cudart = cudart if cudart is not None else _import_cudart()
        self.device = device
        self._current = threading.local()
        count = self._check(self.cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device >= count:
            raise BackendError(f"CUDA device {device} requested but only {count} device(s) are visible")
        self.make_current()

    def make_current(self) -> None:
        """cudaSetDevice(device) on the calling thread, once per thread (the current device is per thread:
        a thread that never set it would allocate and launch on device 0)."""
        if getattr(self._current, "device", None) != self.device:
            self._check(self.cudart.cudaSetDevice(self.device), "cudaSetDevice")
            self._current.device = self.device

    def _check(self, result: Any, what: str) -> Any:
        """cuda-python returns (err, *values); raise on err != cudaSuccess and return the value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            msg = self.cudart.cudaGetErrorString(err)
            text = msg[1].decode() if isinstance(msg, tuple) and isinstance(msg[1], bytes) else str(err)
            raise BackendError(f"{what} failed: {text} ({err})")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def device_info(self) -> GpuInfo:
        prop = self._check(self.cudart.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return GpuInfo(self.device, name.rstrip("\x00"), (int(prop.major), int(prop.minor)))

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.cudart.cudaFree(ptr), "cudaFree")

    def malloc_host(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))

    def free_host(self, ptr: int) -> None:
        self._check(self.cudart.cudaFreeHost(ptr), "cudaFreeHost")

    def stream_create(self) -> Any:
        flags = self.cudart.cudaStreamNonBlocking
        return self._check(self.cudart.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")

    def stream_destroy(self, stream: Any) -> None:
        self._check(self.cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_sync(self, stream: Any) -> None:
        self._check(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def htod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(H2D)")

    def dtoh_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(D2H)")
