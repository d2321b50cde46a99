"""Segment everything (service/tasks/everything.py) against segment_anything's SamAutomaticMaskGenerator on the same
weights and parameters (single crop): its pieces (point grid, stability score, mask boxes, box NMS) against
segment_anything's and torchvision's own functions, and whole runs on the tiny random weights (torch Sam) and
on the trained demo bundle (an ONNX-backed Sam, benchmarks/everything_vs_amg.py)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision", reason="SamAutomaticMaskGenerator needs torchvision (batched_nms)")
from segment_anything.utils import amg  # noqa: E402
from torchvision.ops import batched_nms  # noqa: E402

from service.runtime.base import DecoderOutput  # noqa: E402
from service.tasks.everything import (  # noqa: E402
    EverythingParams,
    box_nms,
    mask_boxes,
    point_grid,
    stability_scores,
)

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))
from everything_vs_amg import bundle_sam, compare, shapes_png, start_engine  # noqa: E402
from test_parity import reference_sam, rotated_jpeg  # noqa: E402

pytestmark = pytest.mark.anyio
DEMO_BUNDLE = ROOT / "training" / "demo_bundle"


@pytest.mark.parametrize("side", [1, 5, 32])
def test_point_grid_is_sams(side: int) -> None:
    expected = amg.build_point_grid(side) * np.array([[200, 320]])
    np.testing.assert_allclose(point_grid(side, (320, 200)), expected, rtol=0, atol=1e-9)


def test_stability_and_boxes_match_segment_anything() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (12, 30, 40)).astype(np.float32)
    logits[3] = -5.0  # empty mask: NaN stability, box [0, 0, 0, 0]
    logits[4] = -5.0
    logits[4, 7, 9:21] = 5.0  # a one-row mask: zero-height box
    ref = amg.calculate_stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy()
    np.testing.assert_allclose(stability_scores(logits), ref, rtol=1e-6, equal_nan=True)
    ref_boxes = amg.batched_mask_to_box(torch.from_numpy(logits > 0)).numpy()
    np.testing.assert_array_equal(mask_boxes(logits > 0), ref_boxes)
    assert mask_boxes(logits > 0)[4].tolist() == [9, 7, 20, 7]


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 0.95, 1.0])
def test_box_nms_matches_torchvision_batched_nms(threshold: float) -> None:
    """Including boxes of zero width or height, which torchvision never suppresses."""
    rng = np.random.default_rng(int(threshold * 100))
    for _ in range(40):
        count = int(rng.integers(1, 80))
        x0, y0 = rng.integers(0, 100, count), rng.integers(0, 100, count)
        boxes = np.stack([x0, y0, x0 + rng.integers(0, 50, count), y0 + rng.integers(0, 50, count)], axis=1)
        scores = rng.permutation(count).astype(np.float32) / count - 0.3  # distinct, some negative
        ref = batched_nms(
            torch.from_numpy(boxes).float(), torch.from_numpy(scores), torch.zeros(count), threshold
        )
        np.testing.assert_array_equal(box_nms(boxes, scores, threshold), ref.numpy())
    assert box_nms(np.zeros((0, 4), np.int64), np.zeros((0,), np.float32), 0.7).shape == (0,)


class ScaledDecoder:
    """The real backend with the decoder's mask logits x `scale` and predicted IoU x 4 - 0.3: exactly what the
    weights of `scaled_model` compute (both are the last linear layers of the decoder's MLP heads)."""

    def __init__(self, inner, scale: float) -> None:
        self.inner, self.scale, self.info = inner, scale, inner.info

    def decode(self, *args) -> DecoderOutput:
        out = self.inner.decode(*args)
        return DecoderOutput(out.iou_predictions * 4.0 - 0.3, out.low_res_masks * self.scale)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def scaled_model(tiny_model, scale: float):
    """A copy of the tiny weights whose hypernetwork and IoU heads' last layers are scaled like ScaledDecoder.
    Random weights give near-zero logits (every stability score 0); sharpened, the filters have work to do."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(scale)
            mlp.layers[-1].bias.mul_(scale)
        last = model.mask_decoder.iou_prediction_head.layers[-1]
        last.weight.mul_(4.0)
        last.bias.mul_(4.0).sub_(0.3)
    return model


@pytest.mark.parametrize(
    "params",
    [
        EverythingParams(8, 64, 0.0, 0.0, 1.0, 10_000),  # no filter: every grid mask
        EverythingParams(8, 16, 0.5, 0.95, 1.0, 10_000),  # IoU and stability filters, 4 decoder calls
    ],
)
async def test_matches_sam_automatic_mask_generator_tiny(
    make_engine, tiny_bundle, tiny_model, params
) -> None:
    """torch Sam with the exported tiny weights (sharpened in both) vs the service on ONNX Runtime."""
    engine = await make_engine(wrap=lambda backend: ScaledDecoder(backend, 2000.0), cache_dtype="float32")
    try:
        sam = reference_sam(scaled_model(tiny_model, 2000.0), engine.bundle.manifest.model.config)
        result = await compare(engine, sam, rotated_jpeg(), params)
    finally:
        await engine.stop()
    assert result["reference_masks"] >= 50, f"vacuous comparison: {result}"
    assert_matched(result, params)


def assert_matched(result: dict, params: EverythingParams) -> None:
    """Every mask of either side has a mask of the other with IoU >= 0.95, except masks on an edge where ONNX
    Runtime and torch may round differently: a predicted IoU within 2e-3 or a stability within 1e-2 of its
    threshold, or (box NMS on a knife's edge) a counterpart of IoU >= 0.9; at most max(2, 3%) per side."""
    for side, other in (("service", "reference"), ("reference", "service")):
        unmatched = result[f"{side}_unmatched"]
        assert len(unmatched) <= max(2, 0.03 * result[f"{side}_masks"]), result
        for i in unmatched:
            score, stability = result[f"{side}_scores"][i], result[f"{side}_stability"][i]
            assert (
                abs(score - params.pred_iou_thresh) < 2e-3
                or abs(stability - params.stability_score_thresh) < 1e-2
                or result[f"{side}_best_iou"][i] >= 0.9
            ), f"{side} mask {i} has no {other} counterpart: {result}"


@pytest.mark.parametrize(
    "params",
    [
        EverythingParams(16, 64, 0.88, 0.95, 0.7, 10_000),  # SamAutomaticMaskGenerator's defaults
        EverythingParams(16, 64, 0.5, 0.8, 0.9, 10_000),  # looser: many masks, NMS busy
    ],
)
async def test_matches_sam_automatic_mask_generator_demo_bundle(params) -> None:
    """Trained weights (the demo bundle): SamAutomaticMaskGenerator drives the bundle's own ONNX graphs."""
    engine = await start_engine(DEMO_BUNDLE)
    try:
        b = engine.bundle
        from service.runtime.registry import create_backend

        sam = bundle_sam(
            create_backend("onnxruntime", b, engine.settings), b.image_size, b.pixel_mean, b.pixel_std
        )
        result = await compare(engine, sam, shapes_png(256), params)
    finally:
        await engine.stop()
    assert result["reference_masks"] >= 3, f"vacuous comparison: {result}"
    assert_matched(result, params)
