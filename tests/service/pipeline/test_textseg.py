"""Text segment decision rule and the refine helpers (pure numpy, synthetic inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline import textseg
from service.pipeline.transforms import postprocess_masks, preprocess_shape

S = 256


def _direct(logits: np.ndarray, input_size, original):
    """Reference: upscale all classes at once, softmax, argmax (no streaming)."""
    full = postprocess_masks(logits, input_size, original, S).astype(np.float64)
    e = np.exp(full - full.max(axis=0))
    probs = e / e.sum(axis=0)
    return probs, probs.argmax(axis=0)


def test_class_logits_is_scaled_cosine() -> None:
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(4, 5, 8)).astype(np.float32)
    patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
    texts = rng.normal(size=(3, 8)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=-1, keepdims=True)
    out = textseg.class_logits(patches, texts, 50.0)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[1, 2, 3], 50.0 * patches[2, 3] @ texts[1], rtol=1e-5)


@pytest.mark.parametrize("original", [(300, 451), (451, 300), (97, 640)])
def test_text_segment_matches_direct_softmax_argmax(original) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(7, 16, 16)).astype(np.float32)  # 5 texts + 2 background
    input_size = preprocess_shape(*original, S)
    labels = [f"t{i}" for i in range(5)]
    results = textseg.text_segment(logits, labels, input_size, original, S)
    probs, winner = _direct(logits, input_size, original)
    union = np.zeros(original, bool)
    for t, res in enumerate(results):
        assert res.label == labels[t] and res.mask.shape == original and res.iou_prediction is None
        np.testing.assert_array_equal(res.mask, winner == t)
        assert not (union & res.mask).any()  # masks never overlap
        union |= res.mask
        expected = probs[t][winner == t].mean() if (winner == t).any() else 0.0
        assert res.score == pytest.approx(expected, rel=1e-4)
    np.testing.assert_array_equal(~union, winner >= 5)  # pixels won by background belong to no mask


def test_single_text_rule_is_probability_over_half() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=2.0, size=(2, 16, 16)).astype(np.float32)
    (res,) = textseg.text_segment(logits, ["dog"], (256, 192), (400, 300), S)
    probs, _ = _direct(logits, (256, 192), (400, 300))
    np.testing.assert_array_equal(res.mask, probs[0] > 0.5)
    assert 0.5 < res.score <= 1.0


def test_empty_mask_scores_zero() -> None:
    logits = np.stack([np.full((16, 16), -5.0), np.full((16, 16), 5.0)]).astype(np.float32)
    (res,) = textseg.text_segment(logits, ["cat"], (256, 256), (64, 64), S)
    assert not res.mask.any() and res.score == 0.0


def test_valid_cells_and_mask_prompt() -> None:
    valid = textseg.valid_cells(64, (256, 128), S)  # image occupies the left half of the input frame
    assert valid[:, :32].all() and not valid[:, 32:].any()
    conf = np.full((64, 64), 0.9, np.float32)
    mask_in = textseg.mask_prompt(conf, valid)
    assert mask_in.shape == (1, 64, 64) and mask_in.dtype == np.float32
    assert np.allclose(mask_in[0][valid], np.log(9.0), atol=1e-5)
    assert np.all(mask_in[0][~valid] == -textseg.MASK_LOGIT_CLIP)


def test_coarse_confidence_is_softmax_at_low_res() -> None:
    logits = np.zeros((2, 16, 16), np.float32)
    logits[0, :, :8] = 4.0  # text wins the left half
    logits[1] = 1.0
    conf, wins = textseg.coarse_confidence(logits, 64)
    assert conf.shape == wins.shape == (64, 64)
    assert wins[:, :28].all() and not wins[:, 36:].any()
    np.testing.assert_allclose(conf[0, 0], 1 / (1 + np.exp(-3.0)), rtol=1e-5)


def test_sample_points_deterministic_inside_region() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(size=(64, 64)).astype(np.float32)
    region = np.zeros((64, 64), bool)
    region[10:20, 30:50] = True
    valid = np.ones((64, 64), bool)
    coords, labels = textseg.sample_points(conf, region, valid, 8, seed=7, image_size=S, num_negative=3)
    again, _ = textseg.sample_points(conf, region, valid, 8, seed=7, image_size=S, num_negative=3)
    other, _ = textseg.sample_points(conf, region, valid, 8, seed=8, image_size=S, num_negative=3)
    np.testing.assert_array_equal(coords, again)
    assert not np.array_equal(coords, other)
    assert coords.shape == (11, 2) and list(labels) == [1] * 8 + [0] * 3
    cells = (coords // 4).astype(int)  # cell size 256 / 64 = 4 px; points at cell centres
    np.testing.assert_allclose(coords % 4, 2.0)
    assert all(region[y, x] for x, y in cells[:8]) and not any(region[y, x] for x, y in cells[8:])
    assert len({tuple(c) for c in cells}) == 11  # without replacement


def test_sample_points_prefers_confident_cells() -> None:
    conf = np.full((64, 64), 0.01, np.float32)
    conf[5, 5] = 1000.0  # dominant weight
    region = np.ones((64, 64), bool)
    coords, _ = textseg.sample_points(conf, region, region, 1, seed=0, image_size=S)
    np.testing.assert_allclose(coords[0], [22.0, 22.0])


def test_sample_points_empty_region_uses_most_confident_valid_cell() -> None:
    conf = np.zeros((64, 64), np.float32)
    conf[3, 60] = 0.9  # outside the valid area: ignored
    conf[40, 10] = 0.4
    valid = textseg.valid_cells(64, (256, 128), S)
    coords, labels = textseg.sample_points(conf, np.zeros_like(valid), valid, 5, seed=0, image_size=S)
    np.testing.assert_allclose(coords, [[42.0, 162.0]])
    assert list(labels) == [1]
