"""Prompt models and decoder inputs built exactly like SamPredictor + PromptEncoder."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from pydantic import ValidationError

from service.errors import InvalidInput
from service.pipeline.prompts import (
    Point,
    PromptRequest,
    PromptSpec,
    build_decoder_batches,
    decode_mask_input,
    prompt_tokens,
    validate_prompts,
)
from service.pipeline.transforms import map_boxes, map_coords

ORIG = (300, 451)  # H, W
S = 256


def _npy(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr)
    return base64.b64encode(buf.getvalue()).decode()


def test_points_only_get_one_padding_point() -> None:
    coords, labels = prompt_tokens(
        PromptSpec(points=[Point(x=10, y=20), Point(x=30, y=40, label=0)]), ORIG, S
    )
    np.testing.assert_array_equal(labels, [1, 0, -1])
    np.testing.assert_array_equal(coords[:2], map_coords(np.array([[10, 20], [30, 40]]), ORIG, S))
    np.testing.assert_array_equal(coords[2], [0, 0])


def test_box_corners_follow_points_without_padding() -> None:
    spec = PromptSpec(points=[Point(x=10, y=20)], box=(5, 6, 100, 200))
    coords, labels = prompt_tokens(spec, ORIG, S)
    np.testing.assert_array_equal(labels, [1, 2, 3])
    np.testing.assert_array_equal(coords[1:].reshape(-1), map_boxes(np.array([[5, 6, 100, 200]]), ORIG, S)[0])
    coords, labels = prompt_tokens(PromptSpec(box=(5, 6, 100, 200)), ORIG, S)
    np.testing.assert_array_equal(labels, [2, 3])


def test_batches_group_by_token_count_without_extra_padding() -> None:
    specs = [
        PromptSpec(points=[Point(x=1, y=1)]),  # 2 tokens
        PromptSpec(box=(0, 0, 10, 10)),  # 2 tokens
        PromptSpec(points=[Point(x=1, y=1), Point(x=2, y=2)], box=(0, 0, 10, 10)),  # 4 tokens
        PromptSpec(points=[Point(x=3, y=3)]),  # 2 tokens
    ]
    mask = np.ones((1, 64, 64), np.float32)
    batches = build_decoder_batches(specs, ORIG, S, [None, mask, None, None], 64)
    assert [b.indices for b in batches] == [[0, 1, 3], [2]]
    two = batches[0]
    assert two.point_coords.shape == (3, 2, 2) and two.point_labels.shape == (3, 2)
    np.testing.assert_array_equal(two.point_labels, [[1, -1], [2, 3], [1, -1]])
    np.testing.assert_array_equal(two.has_mask_input, [0, 1, 0])
    assert two.mask_input.shape == (3, 1, 64, 64) and two.mask_input[1].sum() == 64 * 64
    assert batches[1].point_labels.tolist() == [[1, 1, 2, 3]]
    assert all(b.point_coords.dtype == np.float32 for b in batches)


def test_request_validation() -> None:
    req = PromptRequest(prompts=[{"points": [{"x": 1, "y": 2}]}], boxes=[(0, 0, 5, 5), (1, 1, 2, 2)])
    assert len(req.all_prompts()) == 3 and req.all_prompts()[2].box == (1, 1, 2, 2)
    for bad in (
        {},  # nothing to segment
        {"prompts": [{"points": []}]},  # empty prompt
        {"prompts": [{"points": [{"x": 1, "y": 2, "label": 7}]}]},
        {"prompts": [{"points": [{"x": float("nan"), "y": 2}]}]},
        {"boxes": [[10, 10, 5, 5]]},  # inverted box
        {"prompts": [{"box": [1, 2, 3]}]},
        {"prompts": [], "unknown": 1},
    ):
        with pytest.raises(ValidationError):
            PromptRequest.model_validate(bad)


def test_validate_prompts_limits_and_bounds(settings) -> None:
    ok = [PromptSpec(points=[Point(x=451, y=300)])]  # the far edge is inside
    validate_prompts(ok, 451, 300, settings)
    with pytest.raises(InvalidInput, match="outside"):
        validate_prompts([PromptSpec(points=[Point(x=452, y=10)])], 451, 300, settings)
    with pytest.raises(InvalidInput, match="outside"):
        validate_prompts([PromptSpec(box=(-1, 0, 10, 10))], 451, 300, settings)
    with pytest.raises(InvalidInput, match="prompts"):
        validate_prompts(ok * (settings.max_prompts + 1), 451, 300, settings)
    many = [PromptSpec(points=[Point(x=1, y=1)] * (settings.max_points_per_prompt + 1))]
    with pytest.raises(InvalidInput, match="points"):
        validate_prompts(many, 451, 300, settings)


def test_decode_mask_input() -> None:
    arr = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    np.testing.assert_array_equal(decode_mask_input(_npy(arr), 64)[0], arr)
    np.testing.assert_array_equal(decode_mask_input(_npy(arr[None]), 64)[0], arr)
    for bad in (
        "not base64!!",
        base64.b64encode(b"junk").decode(),
        _npy(arr[:32]),
        _npy(np.full((64, 64), np.inf)),
    ):
        with pytest.raises(InvalidInput):
            decode_mask_input(bad, 64)
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput):
        decode_mask_input(base64.b64encode(pickled.getvalue()).decode(), 64)
