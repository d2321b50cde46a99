"""Every client method end to end against a real server on the demo bundle (python -m service, uvicorn).

Each result is checked against the server's own JSON for the same request sent with plain httpx (the client
must carry exactly the server's masks, as numpy arrays), plus the invariants of the response shapes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from client_support import scene_image
from PIL import Image

from samclip_client import AsyncClient, Client, MasksResult, SamclipError
from samclip_client.results import decode_rle
from training.data.shapes import make_scene

SHAPES = ["circle", "square", "triangle"]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def raw(url: str, path: str, params: dict[str, Any], data: bytes) -> dict[str, Any]:
    """The server's JSON for an upload of `data`, without the client."""
    response = httpx.post(
        url + path, params=params, files={"image": ("x.png", data, "image/png")}, timeout=60
    )
    response.raise_for_status()
    return response.json()


def assert_same_masks(result: Any, masks_json: list[dict[str, Any]]) -> None:
    assert len(result) == len(masks_json)
    for mask, expected in zip(result, masks_json, strict=True):
        truth = decode_rle(expected["segmentation"])
        np.testing.assert_array_equal(mask.mask, truth)
        assert mask.mask.dtype == bool and int(mask.mask.sum()) == mask.area == expected["area"]
        assert (mask.score, mask.label, mask.bbox) == (
            expected["score"],
            expected.get("label"),
            expected["bbox"],
        )


def two_red_circles() -> np.ndarray:
    """A scene (128 x 128) holding at least two red circles among other shapes."""
    for seed in range(60_000, 70_000):
        scene = make_scene(seed, min_objects=3, max_objects=5)
        if sum((i.color, i.shape) == ("red", "circle") for i in scene.instances) >= 2:
            return scene.image
    raise AssertionError("no scene with two red circles")


@pytest.fixture(scope="module")
def client(demo_server: str):
    with Client(demo_server) as c:
        yield c


def test_embed_classify_and_input_kinds(client: Client, demo_server: str, tmp_path: Path) -> None:
    image = scene_image(101)
    data = png(image)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    first = client.embed(path)
    assert first.image_id == hashlib.sha256(data).hexdigest() and (first.width, first.height) == (128, 128)
    assert not first.cached
    assert client.embed(data).cached and client.embed(Image.open(path)).image_id == first.image_id
    assert client.embed(image).image_id == client.image(image).image_id  # numpy: the PNG the client wrote
    result = client.classify(path, SHAPES, top_k=2)
    expected = raw(demo_server, "/classify", {"labels": SHAPES, "top_k": 2}, data)["labels"]
    assert [(s.label, s.probability, s.logit) for s in result.labels] == [
        (e["label"], e["probability"], e["logit"]) for e in expected
    ]
    assert result.top == expected[0]["label"] and result.cached


def test_segment_one_mask_per_text(client: Client, demo_server: str) -> None:
    data = png(scene_image(102))
    texts = ["red circle", "blue square"]
    result = client.segment(data, text=texts)
    assert isinstance(result, MasksResult) and result.background_prompts == ["background"]
    assert [m.label for m in result.masks] == texts
    assert_same_masks(result.masks, raw(demo_server, "/segment", {"text": texts}, data)["masks"])
    stacked = result.array()
    assert stacked.shape == (2, 128, 128) and not (stacked[0] & stacked[1]).any()  # a pixel has one winner


def test_prompt_points_boxes_multimask_and_mask_input(client: Client, demo_server: str) -> None:
    data = png(scene_image(103))
    result = client.prompt(data, points=[(64, 64), (5, 5, 0)], boxes=[(10, 10, 70, 70)], multimask=True,
                           return_logits=True)  # fmt: skip
    assert [len(group) for group in result.prompts] == [3, 3]
    prompts = {"prompts": [{"points": [{"x": 64, "y": 64, "label": 1}, {"x": 5, "y": 5, "label": 0}]}],
               "boxes": [[10, 10, 70, 70]], "multimask": True}  # fmt: skip
    expected = httpx.post(
        demo_server + "/segment/prompt", json={"image_id": result.image_id, **prompts}
    ).json()
    assert_same_masks(result.masks, [m for p in expected["prompts"] for m in p["masks"]])
    best = max(result.prompts[0], key=lambda m: m.score)
    assert best.logits.dtype == np.float32 and best.logits.ndim == 2
    again = client.prompt(data, points=[(64, 64)], mask_input=best)  # the previous mask as the mask prompt
    assert again.cached and len(again.masks) == 1 and again.masks[0].mask.shape == (128, 128)


def test_refine(client: Client, demo_server: str) -> None:
    data = png(scene_image(104))
    result = client.refine(data, "red circle", num_points=4, return_coarse=True, return_points=True)
    expected = raw(demo_server, "/segment/refine", {"text": "red circle", "num_points": 4,
                                                     "return_coarse": True, "return_points": True}, data)  # fmt: skip
    assert_same_masks([result.mask, result.coarse], [expected["mask"], expected["coarse"]])
    assert result.points == [(p["x"], p["y"], p["label"]) for p in expected["points"]]


def test_instances_one_mask_per_object(client: Client, demo_server: str) -> None:
    data = png(two_red_circles())
    result = client.instances(data, text=["red circle", "green triangle"], min_area=20)
    expected = raw(demo_server, "/segment", {"text": ["red circle", "green triangle"], "instances": True,
                                              "min_area": 20}, data)  # fmt: skip
    assert_same_masks(result.masks, expected["masks"])
    circles = [m for m in result.masks if m.label == "red circle"]
    assert len(circles) >= 2
    assert [m.instance for m in circles] == list(range(len(circles)))
    assert [m.score for m in circles] == sorted((m.score for m in circles), reverse=True)
    assert all(m.text_score is not None and m.area >= 20 for m in result.masks)
    capped = client.instances(data, text="red circle", max_instances=1)
    assert len(capped.masks) == 1


def test_everything_with_and_without_labels(client: Client, demo_server: str) -> None:
    data = png(scene_image(105))
    plain = client.everything(data, points_per_side=8, max_masks=20)
    expected = raw(demo_server, "/segment/everything", {"points_per_side": 8, "max_masks": 20}, data)
    assert_same_masks(plain.masks, expected["masks"])
    assert 0 < len(plain.masks) <= 20 and plain.labels is None
    assert [m.score for m in plain.masks] == sorted((m.score for m in plain.masks), reverse=True)
    assert all(m.stability_score is not None and len(m.point) == 2 for m in plain.masks)
    labelled = client.everything(data, labels=SHAPES, points_per_side=8, max_masks=20)
    assert labelled.cached and labelled.labels == SHAPES and len(labelled.masks) == len(plain.masks)
    assert all(m.label in SHAPES and 0.0 <= m.label_score <= 1.0 for m in labelled.masks)


def test_async_client_gives_the_servers_masks(demo_server: str) -> None:
    images = [png(scene_image(200 + i)) for i in range(4)] + [png(two_red_circles())]

    async def run() -> list[MasksResult]:
        async with AsyncClient(demo_server) as aclient:
            return await asyncio.gather(*(aclient.segment(d, text="red circle") for d in images))

    results = asyncio.run(run())
    for got, data in zip(results, images, strict=True):
        assert_same_masks(got.masks, raw(demo_server, "/segment", {"text": "red circle"}, data)["masks"])
    assert results[-1].masks[0].area > 0


def test_api_key(server_factory) -> None:
    url = server_factory({"SAMCLIP_API_KEY": "s3cret"})
    data = png(scene_image(106))
    with Client(url) as anonymous, pytest.raises(SamclipError) as caught:
        anonymous.embed(data)
    assert (caught.value.status, caught.value.error_type) == (401, "unauthorized")
    with Client(url, api_key="s3cret") as client:
        assert client.embed(data).image_id == hashlib.sha256(data).hexdigest()
        assert client.info()["model"] == "demo"
