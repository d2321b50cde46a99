"""Every endpoint and mask format through the real app, the real engine and the real exported tiny bundle."""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import encoder_runs, png_bytes, ready_client

from samclip_bundle.manifest import Manifest
from service.render import decode_rle
from service.settings import Settings

W, H = 120, 80
PNG = {"Content-Type": "image/png"}
RUNS = "samclip_encoder_runs_total"


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    settings = Settings(bundle=tiny_bundle, max_batch_size=4, max_batch_wait_ms=150)
    with ready_client(settings) as c:
        yield c


def runs(client: TestClient) -> float:
    return encoder_runs(client)


def files(data: bytes) -> dict:
    return {"image": ("img.png", data, "image/png")}


def check_mask(mask: dict, fmt: str = "rle") -> np.ndarray | None:
    assert {"segmentation", "bbox", "area", "score"} <= set(mask)
    assert len(mask["bbox"]) == 4 and isinstance(mask["area"], int) and isinstance(mask["score"], float)
    if fmt == "rle":
        decoded = decode_rle(mask["segmentation"])
        assert decoded.shape == (H, W) and int(decoded.sum()) == mask["area"]
        return decoded
    assert isinstance(mask["segmentation"], list)
    return None


def test_probes_info_and_docs(client: TestClient, tiny_bundle: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "reason": "ready"}
    info = client.get("/info").json()
    manifest = Manifest.read(tiny_bundle)
    assert info["model"] == "tiny" and info["fingerprint"] == manifest.fingerprint
    assert info["random_init"] is True and "RANDOM" in info["warning"]
    assert info["weights"]["random_init"] is True
    assert info["backend"]["name"] and info["settings"]["max_batch_size"] == 4
    assert "api_key" not in info["settings"]
    spec = client.get("/openapi.json").json()
    for path in (
        "/embed",
        "/classify",
        "/segment",
        "/segment/prompt",
        "/segment/refine",
        "/info",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/segment/prompt"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_embed_then_every_endpoint_reuses_the_embedding(client: TestClient) -> None:
    image = png_bytes(W, H, seed=1)
    before = runs(client)
    first = client.post("/embed", content=image, headers=PNG)
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["width"], body["height"], body["cached"]) == (W, H, False)
    assert (
        "encoder;dur=" in first.headers["Server-Timing"]
        and 'cache;desc="miss"' in first.headers["Server-Timing"]
    )
    assert runs(client) == before + 1
    image_id = body["image_id"]
    calls = [
        client.post("/embed", files=files(image)),
        client.post("/classify?labels=dog&labels=cat", files=files(image)),
        client.post("/classify?labels=dog&labels=cat", json={"image_id": image_id}),
        client.post("/segment?text=dog", content=image, headers=PNG),
        client.post("/segment?text=dog", json={"image_id": image_id}),
        client.post("/segment/prompt", json={"image_id": image_id, "prompts": [{"box": [5, 5, 60, 40]}]}),
        client.post("/segment/refine?text=dog", files=files(image)),
    ]
    for r in calls:
        assert r.status_code == 200, r.text
        assert r.json()["cached"] is True and r.json()["image_id"] == image_id
        assert 'cache;desc="hit"' in r.headers["Server-Timing"]
    assert runs(client) == before + 1, "no second encoder pass for the same image"


def test_fields_travel_where_the_contract_says(client: TestClient) -> None:
    """Parameters are query parameters; a body carries the image (raw, multipart `image`) or `image_id` (JSON).
    Anything else is refused with a message that says where the value goes."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl --data-binary @x.png` sends
    r = client.post("/segment?text=dog", content=png_bytes(W, H, seed=11), headers=headers)
    assert r.status_code == 415 and "image/*" in r.json()["error"]
    image_id = client.post("/embed", content=png_bytes(W, H, seed=11), headers=PNG).json()["image_id"]
    body = client.post("/classify", json={"labels": ["a", "b"], "image_id": image_id})
    assert body.status_code == 422 and "?labels=" in body.json()["error"]
    form = client.post("/classify?labels=a", files=files(png_bytes(W, H, seed=11)), data={"top_k": "1"})
    assert form.status_code == 422 and "top_k" in form.json()["error"]
    raw_prompt = client.post("/segment/prompt", content=png_bytes(W, H, seed=11), headers=PNG)
    assert raw_prompt.status_code == 415
    ok = client.post("/classify?labels=a&labels=b&top_k=1", json={"image_id": image_id})
    assert ok.status_code == 200 and ok.json()["cached"] is True and len(ok.json()["labels"]) == 1


def test_classify_ranks_and_sums_to_one(client: TestClient) -> None:
    labels = ["a dog", "a cat", "a car", "a tree"]
    r = client.post("/classify", params={"labels": labels}, files=files(png_bytes(W, H, seed=2)))
    assert r.status_code == 200, r.text
    out = r.json()["labels"]
    assert sorted(x["label"] for x in out) == sorted(labels)
    probs = [x["probability"] for x in out]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1.0) < 1e-5
    top = client.post(
        "/classify", params={"labels": labels, "top_k": 2}, files=files(png_bytes(W, H, seed=2))
    )
    assert [x["label"] for x in top.json()["labels"]] == [x["label"] for x in out[:2]]


def test_segment_several_texts_one_mask_each_every_format(client: TestClient) -> None:
    image = png_bytes(W, H, seed=3)
    r = client.post("/segment?text=dog&text=cat&text=sky", files=files(image))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["label"] for m in body["masks"]] == ["dog", "cat", "sky"]
    decoded = [check_mask(m) for m in body["masks"]]
    overlap = np.sum([d.astype(int) for d in decoded], axis=0)
    assert overlap.max() <= 1, "text masks are exclusive (argmax over texts + background)"
    assert body["background_prompts"] == ["background"]
    poly = client.post("/segment?text=dog&text=cat&format=polygon", files=files(image)).json()
    for m in poly["masks"]:
        check_mask(m, "polygon")
    png = client.post("/segment?text=dog&text=cat&text=sky&format=png&index=1", files=files(image))
    assert png.headers["content-type"] == "image/png" and png.headers["X-Mask-Label"] == "cat"
    assert png.headers["X-Mask-Count"] == "3"
    arr = np.asarray(Image.open(io.BytesIO(png.content)))
    assert arr.shape == (H, W) and set(np.unique(arr)) <= {0, 255}
    np.testing.assert_array_equal(arr > 0, decoded[1])
    accept = client.post("/segment?text=dog", files=files(image), headers={"Accept": "image/png"})
    assert accept.headers["content-type"] == "image/png"


def test_segment_prompt_multipart_json_multimask_and_boxes(client: TestClient) -> None:
    image = png_bytes(W, H, seed=4)
    prompts = [
        {"points": [{"x": 30, "y": 20, "label": 1}, {"x": 90, "y": 60, "label": 0}]},
        {"box": [10, 10, 70, 50]},
    ]
    r = client.post("/segment/prompt", data={"prompts": json.dumps(prompts)}, files=files(image))
    assert r.status_code == 200, r.text
    groups = r.json()["prompts"]
    assert [len(g["masks"]) for g in groups] == [1, 1]
    for g in groups:
        mask = g["masks"][0]
        check_mask(mask)
        assert mask["iou_prediction"] is not None and mask["score"] == pytest.approx(mask["iou_prediction"])
    image_id = r.json()["image_id"]
    multi = client.post(
        "/segment/prompt",
        json={
            "image_id": image_id,
            "prompts": prompts[:1],
            "boxes": [[0, 0, 40, 40], [50, 30, 110, 75]],
            "multimask": True,
        },
    )
    assert multi.status_code == 200, multi.text
    assert [len(g["masks"]) for g in multi.json()["prompts"]] == [3, 3, 3]
    png = client.post(
        "/segment/prompt?format=png&index=2",
        data={"prompts": json.dumps({"boxes": [[0, 0, 40, 40]], "multimask": True})},
        files=files(image),
    )
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png" and png.headers["X-Mask-Count"] == "3"
    poly = client.post(
        "/segment/prompt?format=polygon&multimask=true",
        json={"image_id": image_id, "boxes": [[0, 0, 40, 40]]},
    )
    assert [len(g["masks"]) for g in poly.json()["prompts"]] == [3]


def test_refine_returns_coarse_and_points_when_asked(client: TestClient) -> None:
    image = png_bytes(W, H, seed=5)
    plain = client.post("/segment/refine?text=dog", files=files(image)).json()
    assert plain["coarse"] is None and plain["points"] is None
    check_mask(plain["mask"])
    r = client.post(
        "/segment/refine",
        params={"text": "dog", "num_points": 5, "seed": 3, "return_coarse": True, "return_points": True},
        files=files(image),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    check_mask(body["mask"]), check_mask(body["coarse"])
    assert 1 <= len(body["points"]) <= 5
    for p in body["points"]:
        assert 0 <= p["x"] <= W and 0 <= p["y"] <= H and p["label"] in (0, 1)
    again = client.post(
        "/segment/refine",
        params={"text": "dog", "num_points": 5, "seed": 3, "return_points": True},
        json={"image_id": body["image_id"]},
    ).json()
    assert again["points"] == body["points"], "same seed, same points"
    png = client.post(
        "/segment/refine?text=dog&format=png&return_coarse=true&index=1", json={"image_id": body["image_id"]}
    )
    assert png.headers["content-type"] == "image/png" and png.headers["X-Mask-Count"] == "2"


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/embed", content=png_bytes(W, H, seed=6), headers=PNG)
    text = client.get("/metrics").text
    for needle in (
        'samclip_requests_total{endpoint="/embed",status="200"}',
        'samclip_request_seconds_bucket{endpoint="/embed"',
        'samclip_inference_seconds_count{graph="encoder"}',
        "samclip_encoder_batch_size_bucket",
        "samclip_queue_depth",
        "samclip_cache_hits_total",
        "samclip_cache_misses_total",
        "samclip_cache_bytes",
        "samclip_encoder_runs_total",
        "samclip_ready 1.0",
    ):
        assert needle in text, needle


def test_concurrent_requests_share_encoder_batches(tiny_bundle: Path) -> None:
    """A backend that runs a batch in one call (ONNX Runtime; OpenVINO caps batches at its infer-request pool)."""
    settings = Settings(bundle=tiny_bundle, backend="onnxruntime", max_batch_size=4, max_batch_wait_ms=150)
    images = [png_bytes(64 + i, 48, seed=200 + i) for i in range(8)]
    with ready_client(settings) as client:
        metrics = client.app.state.service.metrics
        ones_before = metrics.sample("samclip_encoder_batch_size_bucket", le="1.0")
        count_before = metrics.sample("samclip_encoder_batch_size_count")
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda img: client.post("/embed", content=img, headers=PNG), images))
        batches = metrics.sample("samclip_encoder_batch_size_count") - count_before
        singles = metrics.sample("samclip_encoder_batch_size_bucket", le="1.0") - ones_before
    assert all(r.status_code == 200 for r in responses)
    assert batches < 8 and singles < batches, (batches, singles)


def test_server_timing_and_request_id_on_every_response(client: TestClient) -> None:
    for r in (client.get("/healthz"), client.post("/segment?text=a"), client.get("/metrics")):
        assert r.headers["X-Request-ID"] and "total;dur=" in r.headers["Server-Timing"]
    r = client.post("/segment?text=dog", files=files(png_bytes(W, H, seed=9)))
    timing = r.headers["Server-Timing"]
    for stage in ("decode", "queue", "encoder", "postprocess"):
        assert f"{stage};dur=" in timing, timing


@functools.cache
def _corpus() -> dict[str, tuple[bytes, set[int]]]:
    def save(image: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kw)
        return buf.getvalue()

    jpeg = save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG")
    frames = [Image.new("P", (40, 30), i) for i in range(3)]
    gif = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    return {
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], {422}),
        "truncated_png": (png_bytes(64, 64)[:150], {422}),
        "zero_byte": (b"", {400}),
        "random_bytes": (np.random.default_rng(1).bytes(4096), {415}),
        "one_by_100000": (save(Image.new("L", (100000, 1)), "PNG"), {422}),
        "pixel_bomb": (save(Image.new("1", (20000, 20000)), "PNG"), {422}),
        "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", {415}),
        "multi_frame_gif": (gif, {200}),
        "cmyk_jpeg": (save(Image.new("CMYK", (50, 40), (10, 200, 30, 5)), "JPEG"), {200}),
        "grey_16_bit": (save(Image.fromarray(np.full((30, 50), 40000, np.uint16)), "PNG"), {200}),
    }


@pytest.mark.parametrize("name", list(_corpus()))
def test_malformed_image_corpus_gets_4xx_and_server_keeps_serving(client: TestClient, name: str) -> None:
    data, expected = _corpus()[name]
    r = client.post("/segment?text=dog", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code in expected, (name, r.status_code, r.text)
    if r.status_code >= 400:
        assert set(r.json()) == {"error", "error_type", "request_id"}
    ok = client.post("/embed", content=png_bytes(W, H, seed=1), headers=PNG)
    assert ok.status_code == 200 and client.get("/healthz").status_code == 200


def test_accept_q_values_choose_the_format(client: TestClient) -> None:
    image_id = client.post("/embed", content=png_bytes(W, H, seed=12), headers=PNG).json()["image_id"]

    def post(accept: str, query: str = "") -> Any:
        return client.post(
            f"/segment?text=dog{query}", json={"image_id": image_id}, headers={"Accept": accept}
        )

    assert post("application/json;q=1, image/png;q=0.1").headers["content-type"] == "application/json"
    assert post("image/png;q=0.9, application/json;q=0.5").headers["content-type"] == "image/png"
    assert post("image/*").headers["content-type"] == "image/png"
    assert post("image/png;q=0, */*").headers["content-type"] == "application/json"
    assert post("*/*").headers["content-type"] == "application/json"
    refused = post("image/png;q=0", "&format=png")
    assert refused.status_code == 406 and refused.json()["error_type"] == "not_acceptable"
    assert post("text/html").status_code == 406


def test_low_res_logits_round_trip_as_mask_input(client: TestClient) -> None:
    image_id = client.post("/embed", content=png_bytes(W, H, seed=13), headers=PNG).json()["image_id"]
    click = {"points": [{"x": 40, "y": 30, "label": 1}]}
    first = client.post("/segment/prompt?return_logits=true", json={"image_id": image_id, "prompts": [click]})
    assert first.status_code == 200, first.text
    logits = first.json()["prompts"][0]["masks"][0]["low_res_logits"]
    assert isinstance(logits, str) and len(logits) > 100
    plain = client.post("/segment/prompt", json={"image_id": image_id, "prompts": [click]}).json()
    assert plain["prompts"][0]["masks"][0].get("low_res_logits") is None
    again = client.post(
        "/segment/prompt", json={"image_id": image_id, "prompts": [{**click, "mask_input_from": logits}]}
    )
    assert again.status_code == 200, again.text
    shared = client.post(
        "/segment/prompt", json={"image_id": image_id, "prompts": [click], "mask_input": logits}
    )
    assert shared.json()["prompts"] == again.json()["prompts"]
    refine = client.post("/segment/refine?text=dog&return_logits=true", json={"image_id": image_id}).json()
    assert "low_res_logits" in refine["mask"]
    bad = client.post(
        "/segment/prompt", json={"image_id": image_id, "prompts": [click], "mask_input": "AAAA"}
    )
    assert bad.status_code == 422 and bad.json()["error_type"] == "invalid_input"


def test_routing_header_is_a_hint_checked_for_shape(client: TestClient) -> None:
    image = png_bytes(W, H, seed=14)
    image_id = hashlib.sha256(image).hexdigest()
    metrics = client.app.state.service.metrics
    before = metrics.sample("samclip_routing_header_mismatches_total")
    ok = client.post("/embed", content=image, headers={**PNG, "X-Image-Id": image_id})
    assert ok.status_code == 200 and ok.json()["image_id"] == image_id
    other = client.post("/embed", content=image, headers={**PNG, "X-Image-Id": "0" * 64})
    assert (
        other.status_code == 200 and metrics.sample("samclip_routing_header_mismatches_total") == before + 1
    )
    bad = client.post("/embed", content=image, headers={**PNG, "X-Image-Id": "not-a-hash"})
    assert bad.status_code == 422 and "X-Image-Id" in bad.json()["error"]
    spec = client.get("/openapi.json").json()
    params = spec["paths"]["/segment/prompt"]["post"]["parameters"]
    assert any(p["name"] == "X-Image-Id" and p["in"] == "header" for p in params)
