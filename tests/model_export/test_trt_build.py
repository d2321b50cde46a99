"""build-trt's pure-Python side: profiles from the manifest, fp32-layer rule, names, records, manifest update,
CLI wiring. TensorRT itself is not installed on CPU machines: the one real build test is marked `gpu`."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from model_export import trt_build
from model_export.trt_build import ProfileLimits, compute_profiles, keep_fp32
from samclip_bundle.cuda_probe import GpuProbe
from samclip_bundle.engines import engine_filename, select_engines
from samclip_bundle.graphs import GRAPHS
from samclip_bundle.manifest import Manifest
from tests.samclip_bundle.bundle_fakes import FakeCudaDriver, synthetic_manifest


def _manifest(size=256, patch=16, c=64, w=96) -> Manifest:
    return synthetic_manifest(size=size, patch=patch, c=c, w=w)


def test_profiles_follow_manifest_and_limits():
    p = compute_profiles(
        _manifest(size=1024, c=256, w=768), ProfileLimits(max_batch=32, max_prompts=64, max_points=10)
    )
    assert p["encoder"]["image"] == {
        "min": [1, 3, 1024, 1024],
        "opt": [4, 3, 1024, 1024],
        "max": [32, 3, 1024, 1024],
    }
    assert p["clip_head"]["patch_tokens"] == {
        "min": [1, 28, 28, 768],
        "opt": [4, 64, 64, 768],
        "max": [32, 64, 64, 768],
    }
    assert p["text_encoder"]["input_ids"] == {"min": [1, 77], "opt": [80, 77], "max": [128, 77]}
    dec = p["sam_decoder"]
    assert dec["image_embeddings"]["min"] == dec["image_embeddings"]["max"] == [1, 256, 64, 64]
    assert dec["point_coords"] == {"min": [1, 1, 2], "opt": [16, 2, 2], "max": [64, 10, 2]}
    assert dec["point_labels"]["max"] == [64, 10] and dec["has_mask_input"]["max"] == [64]
    assert dec["mask_input"]["max"] == [64, 1, 256, 256]


def test_profiles_clamp_opt_and_grid_to_small_limits():
    p = compute_profiles(
        _manifest(), ProfileLimits(max_batch=2, max_prompts=3, max_points=1, max_text_batch=5)
    )
    assert p["encoder"]["image"]["opt"][0] == 2 and p["text_encoder"]["input_ids"]["opt"] == [5, 77]
    assert p["clip_head"]["patch_tokens"]["min"][1:3] == [16, 16]  # tiny grid 16 < 28: one grid
    assert p["sam_decoder"]["point_coords"]["opt"] == [3, 1, 2]


def test_profiles_reject_bad_limits_and_unknown_dynamic_axes():
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        compute_profiles(_manifest(), ProfileLimits(max_batch=0))
    with pytest.raises(ValueError, match="grid range"):
        compute_profiles(_manifest(), ProfileLimits(min_grid=20))
    m = _manifest()
    m.graphs["encoder"].inputs[0].shape = ["batch", 3, "height", 256]
    with pytest.raises(ValueError, match=r"encoder\.image: axis 2 \('height'\)"):
        compute_profiles(m, ProfileLimits())


def test_fp32_layer_rule():
    assert keep_fp32("NORMALIZATION") and keep_fp32("SOFTMAX") and keep_fp32("REDUCE")
    assert keep_fp32("ELEMENTWISE", "POW")
    assert (
        not keep_fp32("ELEMENTWISE", "SUM")
        and not keep_fp32("MATRIX_MULTIPLY")
        and not keep_fp32("CONVOLUTION")
    )


def test_pin_fp32_layers_sets_precision_and_output_types():
    """_pin_fp32_layers against a fake TensorRT network: only the rule's layers, only float outputs."""
    ns = SimpleNamespace
    float32, float16, int64 = "f32", "f16", "i64"

    class Layer:
        def __init__(self, type_name, out_dtypes, op=None):
            self.type, self.op = ns(name=type_name), ns(name=op) if op else None
            self._outs = [ns(dtype=d) for d in out_dtypes]
            self.num_outputs, self.precision, self.out_types = len(out_dtypes), None, {}

        def get_output(self, i):
            return self._outs[i]

        def set_output_type(self, i, dt):
            self.out_types[i] = dt

    layers = [
        Layer("NORMALIZATION", [float16]),
        Layer("ELEMENTWISE", [float32], "POW"),
        Layer("ELEMENTWISE", [float32], "SUM"),
        Layer("REDUCE", [int64]),
        Layer("SOFTMAX", [float32, float32]),
        Layer("MATRIX_MULTIPLY", [float16]),
    ]
    trt = ns(
        LayerType=ns(ELEMENTWISE=layers[1].type), IElementWiseLayer=Layer, float32=float32, float16=float16
    )
    layers[2].type = trt.LayerType.ELEMENTWISE
    network = ns(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert trt_build._pin_fp32_layers(trt, network) == 3
    assert [lay.precision for lay in layers] == [float32, float32, None, None, float32, None]
    assert layers[4].out_types == {0: float32, 1: float32} and layers[3].out_types == {}


def test_engine_record_and_manifest_update(tmp_path: Path):
    _manifest().write(tmp_path)
    path = tmp_path / engine_filename("encoder", (9, 0), "10.3.0", "fp16")
    path.write_bytes(b"engine-bytes")
    rec = trt_build.engine_record(
        "encoder",
        path,
        cc=(9, 0),
        device_name="NVIDIA H200",
        trt_version="10.3.0",
        precision="fp16",
        profiles={"image": {"min": [1]}},
        fp32_layers=5,
        outputs=["image_embeddings"],
        build_s=1.234,
    )
    assert rec.sha256 == hashlib.sha256(b"engine-bytes").hexdigest()
    assert rec.bytes == 12 and rec.compute_capability == (9, 0) and rec.build_s == 1.23
    manifest = trt_build.update_manifest(tmp_path, [rec])
    on_disk = Manifest.read(tmp_path)
    assert on_disk == manifest and on_disk.engines[0].file == path.name
    assert on_disk.fingerprint == _manifest().fingerprint  # engines are per-GPU additions, not artifacts


def test_cli_parses_and_reports_missing_tensorrt(capsys):
    parser = argparse.ArgumentParser()
    trt_build.add_build_trt_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        [
            "build-trt",
            "B",
            "--precision",
            "fp32",
            "--max-batch",
            "16",
            "--max-prompts",
            "32",
            "--max-points",
            "8",
            "--workspace-gb",
            "2",
        ]
    )
    assert (args.precision, args.max_batch, args.max_prompts, args.max_points, args.workspace_gb) == (
        "fp32",
        16,
        32,
        8,
        2.0,
    )
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert args.func(args) == 2
        assert "needs TensorRT 10" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["build-trt", "B", "--precision", "int8"])


class _FakeTrtBuild:
    """Just enough of the TensorRT 10 builder API for build_engine / build_bundle_engines."""

    __version__ = "10.9.0"

    def __init__(self, outputs):
        ns = SimpleNamespace
        fake = self
        self.flags, self.shapes, self.unmarked, self.parsed = [], {}, [], []
        self.MemoryPoolType = ns(WORKSPACE="ws")
        self.BuilderFlag = ns(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY")
        self.LayerType = ns(ELEMENTWISE="EW")
        self.float32, self.float16 = "f32", "f16"
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})

        class Network:
            def __init__(self):
                self.outs = [ns(name=n) for n in outputs]
                self.num_layers = 0

            num_outputs = property(lambda s: len(s.outs))

            def get_output(self, i):
                return self.outs[i]

            def unmark_output(self, t):
                fake.unmarked.append(t.name)
                self.outs.remove(t)

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.workspace = size

            def create_timing_cache(self, blob):
                fake.cache_in = blob
                return "cache"

            def set_timing_cache(self, cache, ignore_mismatch):
                return True

            def set_flag(self, flag):
                fake.flags.append(flag)

            def add_optimization_profile(self, profile):
                return 0

            def get_timing_cache(self):
                return ns(serialize=lambda: b"timing-cache")

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                assert flags == 0
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return ns(set_shape=lambda name, lo, opt, hi: fake.shapes.__setitem__(name, (lo, opt, hi)))

            def build_serialized_network(self, network, config):
                return b"engine:" + ",".join(o.name for o in network.outs).encode()

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.parsed.append(Path(path).name)
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_build_engine_sets_profiles_flags_and_cache(tmp_path):
    trt = _FakeTrtBuild(["iou_predictions", "low_res_masks"])
    profiles = compute_profiles(_manifest(), ProfileLimits(max_prompts=8, max_points=5))["sam_decoder"]
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old-cache")
    blob, pinned, outputs = trt_build.build_engine(
        trt, tmp_path / "sam_decoder.onnx", "sam_decoder", profiles, "fp16", 2.0, cache
    )
    assert blob == b"engine:iou_predictions,low_res_masks" and outputs == ["iou_predictions", "low_res_masks"]
    assert trt.unmarked == [] and pinned == 0  # format-2 decoders have exactly the contract's outputs
    assert trt.flags == ["FP16", "OBEY"] and trt.workspace == 2 << 30
    assert trt.shapes["point_coords"] == ([1, 1, 2], [8, 2, 2], [8, 5, 2]) and set(trt.shapes) == set(
        profiles
    )
    assert trt.cache_in == b"old-cache" and cache.read_bytes() == b"timing-cache"  # reused, then updated
    trt32 = _FakeTrtBuild(["text_embedding"])
    trt_build.build_engine(
        trt32, tmp_path / "t.onnx", "text_encoder", {}, "fp32", 1.0, tmp_path / "new.cache"
    )
    assert trt32.flags == [] and trt32.cache_in == b""


def test_build_bundle_engines_writes_files_and_manifest(tmp_path, monkeypatch):
    import sys

    _manifest().write(tmp_path)
    fake = _FakeTrtBuild(["out"])
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    probe = GpuProbe(FakeCudaDriver([("NVIDIA H200", (9, 0))]))
    records = trt_build.build_bundle_engines(tmp_path, "fp16", ProfileLimits(max_batch=2), probe=probe)
    assert [r.file for r in records] == [f"{g}.sm90.trt10.9.0.fp16.engine" for g in GRAPHS]
    assert fake.parsed == ["encoder.onnx", "clip_head.onnx", "text_encoder.onnx", "sam_decoder.onnx"]
    assert (tmp_path / "trt_timing.sm90.trt10.9.0.cache").read_bytes() == b"timing-cache"
    chosen = select_engines(Manifest.read(tmp_path), "fp16", (9, 0), "10.9.0")
    assert chosen["encoder"].profiles["image"]["max"] == [2, 3, 256, 256]
    assert chosen["encoder"].sha256 == hashlib.sha256((tmp_path / records[0].file).read_bytes()).hexdigest()
    assert chosen["encoder"].device_name == "NVIDIA H200"
    with pytest.raises(RuntimeError, match="CUDA device 1 is not visible"):
        trt_build.build_bundle_engines(tmp_path, "fp16", ProfileLimits(), device=1, probe=probe)
    fake.__version__ = "11.0.0"
    with pytest.raises(RuntimeError, match="targets TensorRT 10"):
        trt_build.build_bundle_engines(tmp_path, "fp16", ProfileLimits(), probe=probe)
