"""Text-segment decision rule (pure numpy, synthetic inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from service.images.transforms import postprocess_masks, preprocess_shape
from service.tasks import textseg

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
    results = textseg.text_masks(logits, labels, input_size, original, S)
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
    (res,) = textseg.text_masks(logits, ["dog"], (256, 192), (400, 300), S)
    probs, _ = _direct(logits, (256, 192), (400, 300))
    np.testing.assert_array_equal(res.mask, probs[0] > 0.5)
    assert 0.5 < res.score <= 1.0


def test_empty_mask_scores_zero() -> None:
    logits = np.stack([np.full((16, 16), -5.0), np.full((16, 16), 5.0)]).astype(np.float32)
    (res,) = textseg.text_masks(logits, ["cat"], (256, 256), (64, 64), S)
    assert not res.mask.any() and res.score == 0.0
