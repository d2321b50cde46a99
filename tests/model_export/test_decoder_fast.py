"""The fused SAM decoder (model_export/decoder_fast.py) against the plain one, its `fused` bundle variant, and
the service choosing it (setting `decoder_variant`) over the plain graph."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_export.config import load_config  # noqa: E402
from model_export.decoder_fast import FusedSamDecoder  # noqa: E402
from model_export.decoder_variant import FILE, add_decoder_variant  # noqa: E402
from model_export.export_onnx import example_decoder_inputs  # noqa: E402
from model_export.onnx_wrappers import SamDecoderOnnx  # noqa: E402
from samclip_bundle.manifest import Manifest  # noqa: E402
from samclip_bundle.parity import mask_iou, random_prompts  # noqa: E402


@pytest.mark.parametrize(("prompts", "points"), [(1, 2), (3, 4), (2, 1)])
def test_fused_decoder_computes_the_plain_decoder(tiny_model, prompts: int, points: int) -> None:
    """Same outputs (fp32, up to rounding) for every label kind -1..3 and with / without mask prompts."""
    args = example_decoder_inputs(load_config("tiny"), prompts, points, seed=prompts + points)
    with torch.no_grad():
        plain = SamDecoderOnnx(tiny_model).eval()(*args)
        fused = FusedSamDecoder(tiny_model).eval()(*args)
    for a, b in zip(plain, fused, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fused_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fused") / "bundle"
    shutil.copytree(tiny_bundle, out)
    return out, add_decoder_variant(out)


def test_variant_is_written_with_its_parity(fused_bundle: tuple[Path, dict]) -> None:
    bundle, summary = fused_bundle
    manifest = Manifest.read(bundle)
    (entry,) = manifest.variants["sam_decoder"]
    assert summary["file"] == entry.file == FILE and (bundle / FILE).is_file()
    assert entry.name == "fused" and set(entry.runtimes) == {"openvino", "onnxruntime"}
    parity = entry.parity.model_dump()
    assert parity["passed"] and parity["decoder_mask_iou"] >= 0.97 and parity["fp32_max_abs_error"] < 1e-3
    assert parity["fused_onnxruntime_mask_iou"] >= 0.999  # fp32: the same function
    assert manifest.check_artifacts(bundle) == []  # sha256 recorded, fingerprint refreshed


def _backend(bundle: Path, runtime: str, decoder_variant: str):
    from service.bundle import Bundle
    from service.runtime.registry import create_backend

    settings = SimpleNamespace(decoder_variant=decoder_variant, intra_op_threads=1, variant="auto")
    return create_backend(runtime, Bundle.load(bundle), settings)


def _file(backend) -> str:
    """The decoder file a backend loaded (/info: a name, or {"file": ...} for OpenVINO)."""
    label = backend.info.details["graphs"]["sam_decoder"]
    return label if isinstance(label, str) else label["file"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_service_runs_the_fused_decoder_by_default_and_matches_the_plain_one(
    fused_bundle: tuple[Path, dict], runtime: str
) -> None:
    if runtime == "openvino":
        pytest.importorskip("openvino")
    bundle, _ = fused_bundle
    fast, plain = _backend(bundle, runtime, "auto"), _backend(bundle, runtime, "none")
    try:
        assert _file(fast) == FILE and _file(plain) == "sam_decoder.onnx"
        assert "SAM decoder: variant fused" in fast.info.details["variant_reason"]
        manifest = Manifest.read(bundle)
        grid, chans = manifest.embed_grid, manifest.model.config["encoder"]["out_chans"]
        emb = np.random.default_rng(0).normal(size=(1, chans, grid, grid)).astype(np.float32)
        prompts = random_prompts(6, manifest.preprocess.image_size, manifest.embed_grid, seed=3)
        order = [prompts[k] for k in ("point_coords", "point_labels", "mask_input", "has_mask_input")]
        a, b = plain.decode(emb, *order), fast.decode(emb, *order)
        assert a.low_res_masks.shape == b.low_res_masks.shape
        ious = [
            mask_iou(x > 0, y > 0)
            for x, y in zip(
                a.low_res_masks.reshape(-1, 4 * grid, 4 * grid),
                b.low_res_masks.reshape(-1, 4 * grid, 4 * grid),
                strict=True,
            )
        ]
        assert np.mean(ious) >= (0.999 if runtime == "onnxruntime" else 0.97)
    finally:
        fast.close()
        plain.close()


def test_a_missing_decoder_variant_is_a_clear_error(fused_bundle: tuple[Path, dict]) -> None:
    from service.runtime.base import BackendError

    with pytest.raises(BackendError, match="decoder_variant.*'nope'"):
        _backend(fused_bundle[0], "onnxruntime", "nope")
