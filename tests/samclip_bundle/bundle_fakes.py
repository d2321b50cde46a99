"""Test helpers for the bundle contract: a synthetic valid Manifest (no export needed) and a fake CUDA driver
library for samclip_bundle.cuda_probe (a GPU cannot be present on the CPU machines)."""

from __future__ import annotations

import ctypes
from typing import Any

from samclip_bundle.graphs import GRAPH_FILES
from samclip_bundle.manifest import FORMAT_VERSION, Manifest

SHA = "0" * 64


def synthetic_manifest(size: int = 256, patch: int = 16, c: int = 64, w: int = 96, d: int = 64) -> Manifest:
    """A format-2 manifest of a model with image size `size`, patch `patch`, C=c, W=w, D=d (files not written)."""
    h, f32 = size // patch, "float32"

    def spec(name: str, shape: list, dtype: str = f32) -> dict[str, Any]:
        return {"name": name, "shape": shape, "dtype": dtype}

    io = {
        "encoder": ([spec("image", ["batch", 3, size, size])],
                    [spec("image_embeddings", ["batch", c, h, h]), spec("patch_tokens", ["batch", h, h, w])]),
        "clip_head": ([spec("patch_tokens", ["batch", "grid_h", "grid_w", w])],
                      [spec("image_embedding", ["batch", d]), spec("patch_embeddings", ["batch", "grid_h", "grid_w", d])]),
        "text_encoder": ([spec("input_ids", ["num_texts", 77], "int64")], [spec("text_embedding", ["num_texts", d])]),
        "sam_decoder": (
            [spec("image_embeddings", [1, c, h, h]), spec("point_coords", ["num_prompts", "num_points", 2]),
             spec("point_labels", ["num_prompts", "num_points"]), spec("mask_input", ["num_prompts", 1, 4 * h, 4 * h]),
             spec("has_mask_input", ["num_prompts"])],
            [spec("iou_predictions", ["num_prompts", 4]), spec("low_res_masks", ["num_prompts", 4, 4 * h, 4 * h])],
        ),
    }  # fmt: skip
    data = {
        "format_version": FORMAT_VERSION,
        "model": {"name": "synthetic", "config": {"image_size": size, "encoder": {"patch_size": patch}}},
        "preprocess": {"image_size": size, "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375]},
        "graphs": {g: {"file": GRAPH_FILES[g], "sha256": SHA, "inputs": i, "outputs": o} for g, (i, o) in io.items()},
        "tokenizer": {"file": "tokenizer.json", "sha256": SHA},
        "fingerprint": "",
    }  # fmt: skip
    manifest = Manifest.model_validate(data)
    manifest.refresh_fingerprint()
    return manifest


class FakeCudaDriver:
    """The libcuda driver calls cuda_probe makes, answering for `devices` [(name, (major, minor))]; `init_error`
    makes cuInit fail (e.g. 100 = CUDA_ERROR_NO_DEVICE)."""

    def __init__(self, devices: list[tuple[str, tuple[int, int]]], init_error: int = 0) -> None:
        self.devices, self.init_error = devices, init_error

    def cuInit(self, flags: int) -> int:
        return self.init_error

    def cuDeviceGetCount(self, count: Any) -> int:
        count._obj.value = len(self.devices)
        return 0

    def cuDeviceGet(self, device: Any, index: int) -> int:
        device._obj.value = index
        return 0

    def cuDeviceGetName(self, buf: ctypes.Array, size: int, device: ctypes.c_int) -> int:
        buf.value = self.devices[device.value][0].encode()
        return 0

    def cuDeviceGetAttribute(self, out: Any, attribute: int, device: ctypes.c_int) -> int:
        major, minor = self.devices[device.value][1]
        out._obj.value = major if attribute == 75 else minor
        return 0
