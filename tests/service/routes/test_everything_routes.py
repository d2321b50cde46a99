"""POST /segment/everything and /segment?text=...&instances=true through the real app, engine and exported tiny
bundle: response shapes, ordering, bounds from the settings (in /openapi.json and enforced), PNG output, and one
encoder pass per image whatever is asked of it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import encoder_runs, png_bytes, ready_client, wait_status

from service.main import create_app
from service.render import decode_rle
from service.settings import Settings

W, H = 120, 80
PNG = {"Content-Type": "image/png"}
RUNS = "samclip_encoder_runs_total"
DEMO_BUNDLE = Path(__file__).resolve().parents[3] / "training" / "demo_bundle"
LOOSE = "points_per_side=8&pred_iou_thresh=0&stability_score_thresh=0&box_nms_thresh=0.9"
"""Random weights: SAM's default thresholds leave nothing, so the tests loosen them."""


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    settings = Settings(bundle=tiny_bundle, max_points_per_side=16, max_everything_masks=50, max_instances=5)
    with ready_client(settings) as c:
        yield c


def runs(client: TestClient) -> float:
    return encoder_runs(client)


def test_everything_with_labels_on_one_encoder_pass(client: TestClient) -> None:
    image = png_bytes(W, H, seed=21)
    before = runs(client)
    r = client.post(
        f"/segment/everything?{LOOSE}&max_masks=7&labels=a dog&labels=a cat", content=image, headers=PNG
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == ["a dog", "a cat"] and (body["width"], body["height"]) == (W, H)
    masks = body["masks"]
    assert 1 <= len(masks) <= 7
    scores = [m["score"] for m in masks]
    assert scores == sorted(scores, reverse=True)
    for m in masks:
        decoded = decode_rle(m["segmentation"])
        assert decoded.shape == (H, W) and int(decoded.sum()) == m["area"]
        assert m["iou_prediction"] == m["score"] and 0.0 <= m["stability_score"] <= 1.0
        assert 0 <= m["point"][0] <= W and 0 <= m["point"][1] <= H
        assert m["label"] in ("a dog", "a cat") and 0.5 <= m["label_score"] <= 1.0
    again = client.post(
        f"/segment/everything?{LOOSE}&max_masks=7&labels=a dog&labels=a cat",
        json={"image_id": body["image_id"]},
    )
    assert again.status_code == 200 and again.json()["cached"] is True
    assert [m["segmentation"] for m in again.json()["masks"]] == [m["segmentation"] for m in masks]
    inst = client.post("/segment?text=a dog&instances=true&min_area=0", json={"image_id": body["image_id"]})
    assert inst.status_code == 200, inst.text
    assert runs(client) == before + 1, "everything, labels and instances all reuse the one embedding"


def test_everything_without_labels_and_as_png(client: TestClient) -> None:
    image = png_bytes(W, H, seed=22)
    body = client.post(f"/segment/everything?{LOOSE}", files={"image": ("x.png", image, "image/png")}).json()
    assert body["labels"] is None and body["masks"]
    assert all(m["label"] is None and m["label_score"] is None for m in body["masks"])
    png = client.post(f"/segment/everything?{LOOSE}&format=png&index=0", content=image, headers=PNG)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["X-Mask-Count"] == str(len(body["masks"]))
    assert png.headers["X-Mask-Area"] == str(body["masks"][0]["area"])
    past = client.post(
        f"/segment/everything?{LOOSE}&format=png&index={len(body['masks'])}", content=image, headers=PNG
    )
    assert past.status_code == 404 and past.json()["error_type"] == "no_such_mask"


@pytest.mark.parametrize(
    "query",
    [
        "points_per_side=0",
        "points_per_side=17",  # max_points_per_side=16 here
        "pred_iou_thresh=1.5",
        "stability_score_thresh=-0.1",
        "box_nms_thresh=nan",
        "max_masks=51",  # max_everything_masks=50 here
        "labels=a&labels=a",
        "labels=%20a",
    ],
)
def test_everything_refuses_out_of_bounds_parameters(client: TestClient, query: str) -> None:
    r = client.post(f"/segment/everything?{query}", content=png_bytes(W, H, seed=23), headers=PNG)
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error", "error_type", "request_id"}


def test_openapi_states_the_settings_bounds(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"]["/segment/everything"]["post"]["parameters"]}
    assert params["points_per_side"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 16,
        "default": 16,
    }
    assert params["max_masks"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 50, "default": 50}
    for name, default in (
        ("pred_iou_thresh", 0.88),
        ("stability_score_thresh", 0.95),
        ("box_nms_thresh", 0.7),
    ):
        assert params[name]["schema"] == {
            "type": "number",
            "minimum": 0.0,
            "maximum": 1.0,
            "default": default,
        }
    assert params["labels"]["schema"]["type"] == "array" and params["labels"]["schema"]["uniqueItems"] is True
    assert not params["labels"]["required"]
    segment = {p["name"]: p for p in spec["paths"]["/segment"]["post"]["parameters"]}
    assert segment["instances"]["schema"] == {"type": "boolean", "default": False}
    assert segment["max_instances"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 5, "default": 5}
    assert segment["min_area"]["schema"]["minimum"] == 0 and segment["min_area"]["schema"]["default"] == 64


def test_text_instances(client: TestClient) -> None:
    image = png_bytes(W, H, seed=24)
    plain = client.post("/segment?text=dog&text=cat", content=image, headers=PNG).json()
    assert [m["label"] for m in plain["masks"]] == ["dog", "cat"]
    assert all("instance" not in m and "text_score" not in m for m in plain["masks"]), "unchanged without it"
    r = client.post("/segment?text=dog&text=cat&instances=true&min_area=0", content=image, headers=PNG)
    assert r.status_code == 200, r.text
    masks = r.json()["masks"]
    assert masks, "random weights still give text regions on noise"
    for text in ("dog", "cat"):
        mine = [m for m in masks if m["label"] == text]
        assert len(mine) <= 5  # max_instances=5 here
        assert [m["instance"] for m in mine] == list(range(len(mine)))
        assert [m["score"] for m in mine] == sorted((m["score"] for m in mine), reverse=True)
        assert all(0.0 < m["text_score"] <= 1.0 and m["iou_prediction"] == m["score"] for m in mine)
    labels = [m["label"] for m in masks]
    assert labels == sorted(labels, key=["dog", "cat"].index), "grouped by text in request order"
    one = client.post(
        "/segment?text=dog&instances=true&min_area=0&max_instances=1", content=image, headers=PNG
    )
    assert len(one.json()["masks"]) <= 1
    none = client.post(f"/segment?text=dog&instances=true&min_area={W * H + 1}", content=image, headers=PNG)
    assert none.status_code == 200 and none.json()["masks"] == []
    png = client.post("/segment?text=dog&instances=true&min_area=0&format=png", content=image, headers=PNG)
    assert png.status_code == 200 and png.headers["X-Mask-Label"] == "dog"
    too_many = client.post("/segment?text=dog&instances=true&max_instances=6", content=image, headers=PNG)
    assert too_many.status_code == 422
    decoded = [decode_rle(m["segmentation"]) for m in masks]
    assert all(d.shape == (H, W) for d in decoded) and np.any([d.any() for d in decoded])


@pytest.fixture(scope="module")
def demo_client() -> Iterator[TestClient]:
    """The committed demo bundle (trained on the procedural shapes)."""
    with TestClient(create_app(Settings(bundle=DEMO_BUNDLE))) as c:
        assert wait_status(c, {"ready", "failed"})["status"] == "ready"
        yield c


def scene_png(seed: int):
    from training.data.shapes import make_scene

    scene = make_scene(seed, size=256, min_objects=3, max_objects=5)
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="PNG")
    return scene, buf.getvalue()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


@pytest.mark.parametrize("seed", [101, 104])
def test_demo_bundle_one_instance_per_object_and_labelled_everything(
    demo_client: TestClient, seed: int
) -> None:
    """Trained weights: every object of a scene is one instance of its caption, and segment-everything finds
    the objects and labels them with their captions."""
    scene, data = scene_png(seed)
    captions = sorted({obj.caption for obj in scene.instances})
    r = demo_client.post(
        "/segment", params={"text": captions, "instances": "true"}, content=data, headers=PNG
    )
    assert r.status_code == 200, r.text
    found = [(m["label"], decode_rle(m["segmentation"])) for m in r.json()["masks"]]
    assert len(found) == len(scene.instances)
    for obj in scene.instances:
        assert max(iou(obj.mask, mask) for label, mask in found if label == obj.caption) >= 0.5
    labels = [
        f"a {color} {shape}"
        for color in ("red", "green", "blue")
        for shape in ("circle", "square", "triangle")
    ]
    everything = demo_client.post("/segment/everything", params={"labels": labels}, content=data, headers=PNG)
    masks = [(m["label"], decode_rle(m["segmentation"])) for m in everything.json()["masks"]]
    hits = [max((iou(obj.mask, mask), label) for label, mask in masks) for obj in scene.instances]
    assert sum(best >= 0.5 for best, _ in hits) >= len(scene.instances) - 1
    assert all(
        label == obj.caption for (best, label), obj in zip(hits, scene.instances, strict=True) if best >= 0.5
    )
