"""Text-segment decision rule (pure numpy, synthetic inputs): the fast path (`text_masks`) against the
documented rule computed directly at original size, and against the plain path (`full_res_text_masks`)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.images.transforms import postprocess_masks, preprocess_shape, resize_bilinear
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


def _input_frame_score(logits: np.ndarray, input_size, t: int) -> float:
    """The fast path's score: mean probability of t over the input-frame pixels t wins."""
    up = resize_bilinear(logits, (S, S))[:, : input_size[0], : input_size[1]].astype(np.float64)
    e = np.exp(up - up.max(axis=0))
    probs = e / e.sum(axis=0)
    won = probs.argmax(axis=0) == t
    return float(probs[t][won].mean())


@pytest.mark.parametrize("original", [(300, 451), (451, 300), (97, 640)])
@pytest.mark.parametrize("smooth", [False, True])  # noise: every pixel resampled; smooth: the banded path
def test_text_segment_matches_direct_softmax_argmax(original, smooth: bool) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(7, 16, 16)).astype(np.float32)  # 5 texts + 2 background
    if smooth:
        logits = cv2.GaussianBlur(logits.transpose(1, 2, 0), (0, 0), 2.0).transpose(2, 0, 1) * 4.0
    input_size = preprocess_shape(*original, S)
    labels = [f"t{i}" for i in range(5)]
    results = textseg.text_masks(logits, labels, input_size, original, S)
    probs, winner = _direct(logits, input_size, original)
    union = np.zeros(original, bool)
    for t, res in enumerate(results):
        assert res.label == labels[t] and res.mask.shape == original and res.iou_prediction is None
        np.testing.assert_array_equal(res.mask, winner == t)
        assert res.mask.flags.f_contiguous  # column-major: COCO RLE reads it in place
        assert not (union & res.mask).any()  # masks never overlap
        union |= res.mask
        if not (winner == t).any():
            assert res.score == 0.0
            continue
        # mean over the input frame (documented) == the original-size mean up to the resampling
        assert res.score == pytest.approx(_input_frame_score(logits, input_size, t), rel=1e-5)
        assert res.score == pytest.approx(probs[t][winner == t].mean(), rel=0.02)
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


@pytest.mark.parametrize("classes", [2, 4])
def test_fast_path_equals_the_plain_path_at_photo_size(classes: int) -> None:
    """The fast path against the plain one (original-size float maps) on a 1500 x 2250 photo at S = 1024:
    identical masks but for pixels where two classes tie within float32 rounding (documented; here at most
    1e-5 of the pixels), scores within the resampling difference."""
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(classes, 64, 64)).astype(np.float32)
    original, size = (1500, 2250), 1024
    input_size = preprocess_shape(*original, size)
    labels = [f"t{i}" for i in range(classes - 1)]
    fast = textseg.text_masks(logits, labels, input_size, original, size)
    plain = textseg.full_res_text_masks(logits, labels, input_size, original, size)
    for a, b in zip(fast, plain, strict=True):
        assert a.label == b.label and a.mask.shape == b.mask.shape == original
        assert np.count_nonzero(a.mask != b.mask) <= 1e-5 * a.mask.size
        assert a.score == pytest.approx(b.score, rel=0.01)


def test_a_mask_thinner_than_an_input_pixel_scores_its_own_pixels() -> None:
    """Three classes: text "c" wins at no input-frame pixel, yet between two pixels where "a" and the
    background win in turn it is the largest interpolated value on a few original columns (the image is 8x
    larger than the input frame): its score is the mean probability over those pixels, not 0."""
    maps = np.zeros((3, S, S), np.float32)  # grid == input frame: upscale_to_input is the identity
    maps[1, :, :100], maps[2, :, 100:] = 10.0, 10.0  # "a" wins left of column 100, background right of it
    maps[0] = 6.0  # "c": never the largest at a pixel, but between columns 99 and 100 a = b = 5 < 6
    (c, a) = textseg.text_masks(maps, ["c", "a"], (S, S), (8 * S, 8 * S), S)
    plain = textseg.full_res_text_masks(maps, ["c", "a"], (S, S), (8 * S, 8 * S), S)
    np.testing.assert_array_equal(c.mask, plain[0].mask)
    assert c.mask.any() and not (maps[0] >= maps[1:].max(axis=0)).any()
    assert c.score == pytest.approx(plain[0].score, rel=1e-4) and c.score > 0.5


def test_one_smooth_text_comes_out_as_runs_equal_to_the_plain_path() -> None:
    """One text + one background prompt with smooth maps (a CLIP head's, at a photo's scale): the text mask is
    held as RLE runs (no bitmap made) and equals the plain path's, scores within the resampling difference."""
    rng = np.random.default_rng(4)
    logits = cv2.GaussianBlur(rng.normal(size=(64, 64, 2)).astype(np.float32), (0, 0), 4.0).transpose(2, 0, 1)
    logits = np.ascontiguousarray(logits * (4.0 / logits.std()))
    original, size = (3000, 4000), 1024
    input_size = preprocess_shape(*original, size)
    (fast,) = textseg.text_masks(logits, ["dog"], input_size, original, size)
    (plain,) = textseg.full_res_text_masks(logits, ["dog"], input_size, original, size)
    assert fast.runs is not None and fast.held()["mask"] is None
    assert 0 < fast.runs.area() < fast.mask.size
    assert np.count_nonzero(fast.mask != plain.mask) <= 1e-5 * plain.mask.size
    assert fast.score == pytest.approx(plain.score, rel=0.01)
