"""Prompt request models and decoder inputs built exactly like SamPredictor + PromptEncoder."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from pydantic import ValidationError

from service.errors import InvalidInput
from service.images.transforms import map_boxes, map_coords
from service.routes.requests import build_request_models
from service.settings import Settings
from service.tasks.prompt import (
    Prompt,
    build_decoder_batches,
    decode_mask_input,
    encode_mask_logits,
    prompt_tokens,
)

ORIG = (300, 451)  # H, W
S = 256


def _npy(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr)
    return base64.b64encode(buf.getvalue()).decode()


def test_points_only_get_one_padding_point() -> None:
    coords, labels = prompt_tokens(Prompt(points=((10, 20, 1), (30, 40, 0))), ORIG, S)
    np.testing.assert_array_equal(labels, [1, 0, -1])
    np.testing.assert_array_equal(coords[:2], map_coords(np.array([[10, 20], [30, 40]]), ORIG, S))
    np.testing.assert_array_equal(coords[2], [0, 0])


def test_box_corners_follow_points_without_padding() -> None:
    spec = Prompt(points=((10, 20, 1),), box=(5, 6, 100, 200))
    coords, labels = prompt_tokens(spec, ORIG, S)
    np.testing.assert_array_equal(labels, [1, 2, 3])
    np.testing.assert_array_equal(coords[1:].reshape(-1), map_boxes(np.array([[5, 6, 100, 200]]), ORIG, S)[0])
    coords, labels = prompt_tokens(Prompt(box=(5, 6, 100, 200)), ORIG, S)
    np.testing.assert_array_equal(labels, [2, 3])
    flipped, _ = prompt_tokens(Prompt(box=(100, 200, 5, 6)), ORIG, S)  # corners in any order
    np.testing.assert_array_equal(flipped, coords)


def test_batches_group_by_token_count_without_extra_padding() -> None:
    specs = [
        Prompt(points=((1, 1, 1),)),  # 2 tokens
        Prompt(box=(0, 0, 10, 10)),  # 2 tokens
        Prompt(points=((1, 1, 1), (2, 2, 1)), box=(0, 0, 10, 10)),  # 4 tokens
        Prompt(points=((3, 3, 1),)),  # 2 tokens
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
    model = build_request_models(Settings(max_prompts=3, max_points_per_prompt=2)).prompt
    req = model.model_validate(
        {"prompts": [{"points": [{"x": 1, "y": 2}]}], "boxes": [(0, 0, 5, 5), (2, 2, 1, 1)]}
    )
    prompts = req.all_prompts()
    assert len(prompts) == 3 and prompts[2].box == (2, 2, 1, 1) and prompts[0].points == ((1.0, 2.0, 1),)
    for bad in (
        {},  # nothing to segment
        {"prompts": [], "boxes": []},
        {"prompts": [{"points": []}]},  # empty prompt
        {"prompts": [{"points": [{"x": 1, "y": 2, "label": 7}]}]},
        {"prompts": [{"points": [{"x": float("nan"), "y": 2}]}]},
        {"prompts": [{"points": [{"x": 2e6, "y": 2}]}]},  # beyond the documented coordinate range
        {"prompts": [{"box": [1, 2, 3]}]},
        {"prompts": [], "unknown": 1},
        {"boxes": [[0, 0, 1, 1]] * 4},  # over max_prompts
        {"prompts": [{"points": [{"x": 1, "y": 1}] * 3}]},  # over max_points_per_prompt
    ):
        with pytest.raises(ValidationError):
            model.model_validate(bad)


def test_mask_prompt_applies_to_every_prompt_unless_overridden() -> None:
    model = build_request_models(Settings()).prompt
    req = model.model_validate(
        {"prompts": [{"box": [0, 0, 4, 4]}, {"box": [0, 0, 4, 4], "mask_input_from": "B"}], "boxes": [[1, 1, 2, 2]],
         "mask_input": "A"}
    )  # fmt: skip
    assert [p.mask_input for p in req.all_prompts()] == ["A", "B", "A"]


def test_decode_mask_input() -> None:
    arr = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    np.testing.assert_array_equal(decode_mask_input(_npy(arr), 64)[0], arr)
    np.testing.assert_array_equal(decode_mask_input(encode_mask_logits(arr), 64)[0], arr)
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


def test_large_prompt_groups_are_split_into_bounded_calls() -> None:
    specs = [Prompt(box=(i, i, i + 5, i + 5)) for i in range(10)]
    batches = build_decoder_batches(specs, ORIG, S, [None] * 10, 64, max_prompts=4)
    assert [b.indices for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(b.point_coords.shape[0] == len(b.indices) for b in batches)
