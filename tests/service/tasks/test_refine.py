"""Refine helpers: valid cells, mask prompt, low-res confidence, point sampling (pure numpy)."""

from __future__ import annotations

import numpy as np

from service.tasks import refine

S = 256


def test_valid_cells_and_mask_prompt() -> None:
    valid = refine.valid_cells(64, (256, 128), S)  # image occupies the left half of the input frame
    assert valid[:, :32].all() and not valid[:, 32:].any()
    conf = np.full((64, 64), 0.9, np.float32)
    mask_in = refine.mask_prompt(conf, valid)
    assert mask_in.shape == (1, 64, 64) and mask_in.dtype == np.float32
    assert np.allclose(mask_in[0][valid], np.log(9.0), atol=1e-5)
    assert np.all(mask_in[0][~valid] == -refine.MASK_LOGIT_CLIP)


def test_coarse_confidence_is_softmax_at_low_res() -> None:
    logits = np.zeros((2, 16, 16), np.float32)
    logits[0, :, :8] = 4.0  # text wins the left half
    logits[1] = 1.0
    conf, wins = refine.coarse_confidence(logits, 64)
    assert conf.shape == wins.shape == (64, 64)
    assert wins[:, :28].all() and not wins[:, 36:].any()
    np.testing.assert_allclose(conf[0, 0], 1 / (1 + np.exp(-3.0)), rtol=1e-5)


def test_sample_points_deterministic_inside_region() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(size=(64, 64)).astype(np.float32)
    region = np.zeros((64, 64), bool)
    region[10:20, 30:50] = True
    valid = np.ones((64, 64), bool)
    coords, labels = refine.sample_points(conf, region, valid, 8, seed=7, image_size=S, num_negative=3)
    again, _ = refine.sample_points(conf, region, valid, 8, seed=7, image_size=S, num_negative=3)
    other, _ = refine.sample_points(conf, region, valid, 8, seed=8, image_size=S, num_negative=3)
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
    coords, _ = refine.sample_points(conf, region, region, 1, seed=0, image_size=S)
    np.testing.assert_allclose(coords[0], [22.0, 22.0])


def test_sample_points_empty_region_gives_no_points() -> None:
    conf = np.zeros((64, 64), np.float32)
    conf[40, 10] = 0.4  # confident somewhere, but the text wins no cell: nothing to refine
    valid = refine.valid_cells(64, (256, 128), S)
    coords, labels = refine.sample_points(conf, np.zeros_like(valid), valid, 5, seed=0, image_size=S)
    assert coords.shape == (0, 2) and labels.shape == (0,)
