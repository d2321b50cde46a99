"""Fakes for the TensorRT backend tests: a cuda-python runtime whose "device memory" is host memory moved with
real memcpy, and a `tensorrt` module whose engines compute known numpy functions of their inputs (SPECS).

Like the real runtime, the fake keeps the current device per thread: allocations, copies and stream calls from
a thread that never called cudaSetDevice fail with cudaErrorInvalidDevice (101)."""

from __future__ import annotations

import ctypes
import json
import threading
from types import SimpleNamespace

import numpy as np

S, C, G, W, D, L = 32, 8, 2, 6, 4, 77  # image size, emb channels, grid, width, embed dim, context


# ----------------------------------------------------------------------------- fake cuda-python runtime
class FakeCudart:
    """cuda.bindings.runtime look-alike: (err, value) tuples; memory is ctypes buffers, copies are memmove."""

    cudaStreamNonBlocking = 1
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, cc=(9, 0), fail_malloc=False):
        self.cc, self.fail_malloc = cc, fail_malloc
        self.buffers: dict[int, ctypes.Array] = {}
        self.copies = 0
        self.streams_synced = 0
        self.current: dict[int, int] = {}  # thread ident -> device set by cudaSetDevice on that thread

    def _no_device(self) -> bool:
        return threading.get_ident() not in self.current

    def _alloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def cudaGetDeviceCount(self):
        return (0, 1)

    def cudaSetDevice(self, dev):
        self.current[threading.get_ident()] = dev
        return (0,)

    def cudaGetDeviceProperties(self, dev):
        return (0, SimpleNamespace(name=b"Fake GPU", major=self.cc[0], minor=self.cc[1]))

    def cudaMalloc(self, n):
        if self._no_device():
            return (101, None)
        return (2, None) if self.fail_malloc else (0, self._alloc(n))

    def cudaMallocHost(self, n):
        return (0, self._alloc(n))

    def cudaFree(self, ptr):
        self.buffers.pop(ptr)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        if self._no_device():
            return (101,)
        ctypes.memmove(dst, src, n)
        self.copies += 1
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        return (0, 7)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        if self._no_device():
            return (101,)
        self.streams_synced += 1
        return (0,)

    def cudaGetErrorString(self, err):
        return (0, {2: b"out of memory", 101: b"invalid device ordinal"}.get(err, b"error"))


# ----------------------------------------------------------------------------- fake tensorrt module
def _from_addr(ptr, shape, dtype):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_byte * n).from_address(ptr), dtype=dtype).reshape(shape)


# graph -> (inputs {name: (dtype, max shape)}, outputs {name: (shape_fn(in_shapes), fn(in_arrays))})
SPECS = {
    "encoder": (
        {"image": (np.float32, (2, 3, S, S))},
        {
            "image_embeddings": (
                lambda s: (s["image"][0], C, G, G),
                lambda a: np.broadcast_to(
                    a["image"].mean((1, 2, 3))[:, None, None, None], (len(a["image"]), C, G, G)
                ),
            ),
            "patch_tokens": (
                lambda s: (s["image"][0], G, G, W),
                lambda a: np.broadcast_to(
                    a["image"].max((1, 2, 3))[:, None, None, None], (len(a["image"]), G, G, W)
                ),
            ),
        },
    ),
    "clip_head": (
        {"patch_tokens": (np.float32, (2, G, G, W))},
        {
            "image_embedding": (
                lambda s: (s["patch_tokens"][0], D),
                lambda a: a["patch_tokens"][..., :D].sum((1, 2)),
            ),
            "patch_embeddings": (
                lambda s: (*s["patch_tokens"][:3], D),
                lambda a: a["patch_tokens"][..., :D] * 2,
            ),
        },
    ),
    "text_encoder": (
        {"input_ids": (np.int64, (3, L))},
        {
            "text_embedding": (
                lambda s: (s["input_ids"][0], D),
                lambda a: np.repeat(a["input_ids"][:, :1].astype(np.float32), D, 1),
            )
        },
    ),
    "sam_decoder": (
        {
            "image_embeddings": (np.float32, (1, C, G, G)),
            "point_coords": (np.float32, (4, 5, 2)),
            "point_labels": (np.float32, (4, 5)),
            "mask_input": (np.float32, (4, 1, 4 * G, 4 * G)),
            "has_mask_input": (np.float32, (4,)),
        },
        {
            "iou_predictions": (
                lambda s: (s["point_coords"][0], 4),
                lambda a: np.repeat(a["point_coords"].sum((1, 2))[:, None], 4, 1),
            ),
            "low_res_masks": (
                lambda s: (s["point_coords"][0], 4, 4 * G, 4 * G),
                lambda a: np.broadcast_to(
                    (a["mask_input"] + a["image_embeddings"].mean()), (len(a["mask_input"]), 4, 4 * G, 4 * G)
                ),
            ),
        },
    ),
}


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addr = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return all(d <= m for d, m in zip(shape, self.engine.inputs[name][1], strict=True))

    def get_tensor_shape(self, name):
        return self.engine.outputs[name][0](self.shapes)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        assert stream == 7
        arrays = {
            n: _from_addr(self.addr[n], self.shapes[n], dt) for n, (dt, _) in self.engine.inputs.items()
        }
        for n, (shape_fn, fn) in self.engine.outputs.items():
            _from_addr(self.addr[n], shape_fn(self.shapes), np.float32)[...] = fn(arrays)
        self.engine.runs += 1
        return True


class FakeEngine:
    def __init__(self, graph):
        self.inputs, self.outputs = SPECS[graph]
        self.names = list(self.inputs) + list(self.outputs)
        self.runs = 0

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "IN" if name in self.inputs else "OUT"

    def get_tensor_dtype(self, name):
        return self.inputs[name][0] if name in self.inputs else np.float32

    def get_tensor_profile_shape(self, name, profile):
        hi = self.inputs[name][1]
        return (tuple(1 for _ in hi), hi, hi)

    def create_execution_context(self):
        return FakeContext(self)


class FakeTrt:
    __version__ = "10.9.0"
    TensorIOMode = SimpleNamespace(INPUT="IN", OUTPUT="OUT")
    Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

    def __init__(self):
        self.deserialized: list[str] = []
        trt = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, blob):
                graph = json.loads(blob)["graph"]
                trt.deserialized.append(graph)
                return FakeEngine(graph)

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return dtype
