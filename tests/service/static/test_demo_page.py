"""The browser demo at `/` (service/static/), driven in headless Debian Chromium against a real server process on
the demo bundle: open an image (file input, drag-and-drop), click / shift-click / drag a box, text, everything,
classify, downloads and the API-key field. After every action the overlay canvas must show the server's masks:
the test replays the exact request the page sent (httpx), decodes the masks with pycocotools, scales them to the
canvas and requires IoU >= 0.95 with the canvas's non-transparent pixels, and `mask-count` = the mask count.

SAMCLIP_DEMO_SCREENSHOT=docs/demo.png makes the segment-everything test save the page as that screenshot.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from demo_browser import (
    API_KEY,
    OVERLAY,
    DemoPage,
    iou,
    json_body,
    overlay_state,
    replay,
    response_masks,
    scale_nearest,
    shown_requests,
    union,
)
from PIL import Image

from service.render import decode_rle

MIN_IOU = 0.95
TEST_IDS = ("image-input", "text-input", "segment-text", "overlay", "mask-count")


def check_overlay(demo: DemoPage, path: str) -> tuple[list[Any], list[dict]]:
    """The overlay shows exactly the masks the server returns for the request(s) it shows (IoU >= 0.95 after
    scaling) and mask-count counts them. Returns the browser requests and the server's masks."""
    bits, request_ids = overlay_state(demo.page)
    requests = shown_requests(demo.page, demo.rec, request_ids)
    assert [httpx.URL(r.url).path for r in requests] == [path] * len(requests)
    bodies = [replay(demo.base, r) for r in requests]
    masks = [m for body in bodies for m in response_masks(body)]
    expected = scale_nearest(union(masks, bodies[0]["height"], bodies[0]["width"]), *bits.shape)
    assert expected.any(), "a test action should give a non-empty mask"
    assert iou(bits, expected) >= MIN_IOU, iou(bits, expected)
    assert demo.page.inner_text("[data-testid=mask-count]") == str(len(masks))
    return requests, masks


def to_page(demo: DemoPage, x: float, y: float, size: tuple[int, int]) -> tuple[float, float]:
    """Original-image pixel (x, y) of an image of `size` (H, W) -> page coordinates on the overlay."""
    box = demo.page.locator(OVERLAY).bounding_box()
    return box["x"] + x / size[1] * box["width"], box["y"] + y / size[0] * box["height"]


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def download(demo: DemoPage, selector: str) -> bytes:
    with demo.page.expect_download() as info:
        demo.page.click(selector)
    return Path(info.value.path()).read_bytes()


def test_page_is_served_without_key_and_outside_the_api(demo_server: str) -> None:
    page = httpx.get(demo_server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]  # nothing from a CDN can run
    for test_id in TEST_IDS:
        assert f'data-testid="{test_id}"' in page.text, test_id
    for name in ("app.js", "api.js", "rle.js", "view.js", "style.css"):
        assert httpx.get(f"{demo_server}/static/{name}").status_code == 200, name
    for bad in ("/static/nope.js", "/static/..%2Fdemo.py", "/static/%2E%2E%2F__init__.py"):
        r = httpx.get(demo_server + bad)
        assert r.status_code == 404 and r.json()["error_type"] == "not_found", bad
    paths = httpx.get(demo_server + "/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    assert (
        httpx.post(demo_server + "/embed", content=b"x", headers={"Content-Type": "image/png"}).status_code
        == 401
    )


def test_upload_once_then_click_shift_click_and_box(opened: DemoPage, scene: Any, scene_png: Path) -> None:
    demo, size = opened, scene.image.shape[:2]
    data = scene_png.read_bytes()
    (embed,) = demo.rec.sent("/embed")
    assert embed.post_data_buffer == data and embed.headers["x-image-id"] == hashlib.sha256(data).hexdigest()
    assert embed.headers["x-api-key"] == API_KEY

    circle = next(i.mask for i in scene.instances if i.caption == "a blue circle")
    x, y = centroid(circle)
    demo.page.mouse.click(*to_page(demo, x, y, size))
    (click,), _ = check_overlay(demo, "/segment/prompt")
    (point,) = json_body(click)["prompts"][0]["points"]
    assert point["label"] == 1 and abs(point["x"] - x) < 1 and abs(point["y"] - y) < 1

    demo.page.keyboard.down("Shift")
    demo.page.mouse.click(*to_page(demo, 3, 3, size))  # background corner
    demo.page.keyboard.up("Shift")
    (negative,), _ = check_overlay(demo, "/segment/prompt")
    assert [p["label"] for p in json_body(negative)["prompts"][0]["points"]] == [1, 0]

    demo.page.click("[data-testid=clear-prompts]")
    assert demo.page.inner_text("[data-testid=mask-count]") == "0" and not overlay_state(demo.page)[0].any()

    square = next(i.mask for i in scene.instances if i.caption == "a red square")
    ys, xs = np.nonzero(square)
    x0, y0, x1, y1 = xs.min() - 2.0, ys.min() - 2.0, xs.max() + 3.0, ys.max() + 3.0
    demo.page.mouse.move(*to_page(demo, x0, y0, size))
    demo.page.mouse.down()
    demo.page.mouse.move(*to_page(demo, x1, y1, size), steps=6)
    demo.page.mouse.up()
    (drag,), _ = check_overlay(demo, "/segment/prompt")
    assert drag is demo.rec.sent("/segment/prompt")[-1], "the overlay shows the final box"
    prompt = json_body(drag)["prompts"][0]
    assert prompt["points"] == [] and np.allclose(prompt["box"], [x0, y0, x1, y1], atol=1.0)

    for r in demo.rec.requests:  # every other call about the image names it by id
        if r.method == "POST" and httpx.URL(r.url).path != "/embed":
            assert json_body(r)["image_id"] == r.headers["x-image-id"] == embed.headers["x-image-id"]
    assert len(demo.rec.sent("/embed")) == 1


def test_text_segment_instances_and_refine(opened: DemoPage) -> None:
    demo = opened
    demo.page.fill("[data-testid=text-input]", "blue circle, red square")
    demo.page.click("[data-testid=segment-text]")
    (request,), masks = check_overlay(demo, "/segment")
    assert httpx.URL(request.url).params.get_list("text") == ["blue circle", "red square"]
    assert [m["label"] for m in masks] == ["blue circle", "red square"]
    rows = demo.page.locator("[data-testid=mask-row]").all_inner_texts()
    assert "blue circle" in rows[0] and "red square" in rows[1]

    demo.page.select_option("[data-testid=text-mode]", "instances")
    demo.page.fill("[data-testid=text-input]", "square")
    demo.page.click("[data-testid=segment-text]")
    (request,), masks = check_overlay(demo, "/segment")
    assert httpx.URL(request.url).params["instances"] == "true"
    assert len(masks) >= 2 and all(m["label"] == "square" for m in masks)  # the blue and the red square
    assert sorted(m["instance"] for m in masks) == list(range(len(masks)))

    demo.page.fill("[data-testid=text-input]", "blue circle, red square")
    demo.page.select_option("[data-testid=text-mode]", "refine")
    demo.page.click("[data-testid=segment-text]")
    requests, _ = check_overlay(demo, "/segment/refine")
    assert sorted(httpx.URL(r.url).params["text"] for r in requests) == ["blue circle", "red square"]


def test_everything_with_labels(opened: DemoPage) -> None:
    demo, labels = opened, ["circle", "square", "triangle"]
    demo.page.fill("[data-testid=labels-input]", ", ".join(labels))
    demo.page.check("[data-testid=everything-labels]")
    demo.page.click("[data-testid=everything]")
    (request,), masks = check_overlay(demo, "/segment/everything")
    assert httpx.URL(request.url).params.get_list("labels") == labels
    assert masks and all(m["label"] in labels for m in masks)
    rows = demo.page.locator("[data-testid=mask-row]").all_inner_texts()
    assert len(rows) == len(masks) and all(m["label"] in row for m, row in zip(masks, rows, strict=True))
    screenshot = os.environ.get("SAMCLIP_DEMO_SCREENSHOT")
    if screenshot:
        demo.page.screenshot(path=screenshot)


def test_classify_top_k(opened: DemoPage) -> None:
    demo = opened
    demo.page.fill("[data-testid=labels-input]", "circle, square, triangle, star")
    demo.page.fill("[data-testid=top-k]", "2")
    demo.page.click("[data-testid=classify]")
    demo.page.wait_for_selector("[data-testid=classify-results][data-request-id]", state="attached")
    (request,) = demo.rec.sent("/classify")
    assert httpx.URL(request.url).params.get_list("labels") == ["circle", "square", "triangle", "star"]
    assert httpx.URL(request.url).params["top_k"] == "2"
    expected = replay(demo.base, request)["labels"]
    shown = demo.page.locator("[data-testid=classify-results] li").all_inner_texts()
    assert shown == [f"{s['label']}: {100 * s['probability']:.1f}%" for s in expected]


def test_downloads_are_the_masks_shown(opened: DemoPage) -> None:
    demo = opened
    demo.page.fill("[data-testid=text-input]", "blue circle, green triangle")
    demo.page.click("[data-testid=segment-text]")
    _, masks = check_overlay(demo, "/segment")
    saved = json.loads(download(demo, "[data-testid=download-rle]"))
    assert [m["segmentation"] for m in saved["masks"]] == [m["segmentation"] for m in masks]
    assert saved["image_id"] == json_body(demo.rec.sent("/segment")[0])["image_id"]
    height, width = masks[0]["segmentation"]["size"]
    overlay_png = np.asarray(Image.open(io.BytesIO(download(demo, "[data-testid=download-png]"))))
    assert overlay_png.shape == (height, width, 4)
    assert np.array_equal(overlay_png[..., 3] > 0, union(masks, height, width))
    one = np.asarray(Image.open(io.BytesIO(download(demo, "[data-testid=mask-row] >> nth=1 >> button"))))
    assert np.array_equal(one[..., 0] == 255, decode_rle(masks[1]["segmentation"]))

    demo.page.locator("[data-testid=mask-row] >> nth=0 >> input[type=checkbox]").uncheck()
    bits, _ = overlay_state(demo.page)
    assert demo.page.inner_text("[data-testid=mask-count]") == "1"
    expected = scale_nearest(decode_rle(masks[1]["segmentation"]), *bits.shape)
    assert iou(bits, expected) >= MIN_IOU


def test_key_field_drop_and_reupload_of_an_evicted_image(demo: DemoPage, scene: Any, scene_png: Path) -> None:
    demo.allow_http_errors = True  # the 401 and 404 provoked below
    demo.page.fill("[data-testid=api-key]", "")
    data = base64.b64encode(scene_png.read_bytes()).decode()
    demo.page.evaluate(
        """([data, name]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: 'image/png'}));
        const zone = document.querySelector('[data-testid=drop-zone]');
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [data, "dropped.png"],
    )
    demo.page.wait_for_selector("[data-testid=status].error", state="attached")
    assert "401 unauthorized" in demo.page.inner_text("[data-testid=status]")
    assert "x-api-key" not in demo.rec.sent("/embed")[0].headers

    demo.page.fill("[data-testid=api-key]", API_KEY)
    x, y = centroid(scene.instances[0].mask)
    demo.page.mouse.click(*to_page(demo, x, y, scene.image.shape[:2]))
    check_overlay(demo, "/segment/prompt")  # the image is uploaded with the key first
    assert len(demo.rec.sent("/embed")) == 2

    demo.page.evaluate("() => { samclipDemo.state.image.id = 'f'.repeat(64); }")  # as if evicted
    demo.page.mouse.click(*to_page(demo, x + 1, y, scene.image.shape[:2]))
    check_overlay(demo, "/segment/prompt")
    prompts = demo.rec.sent("/segment/prompt")
    assert json_body(prompts[-2])["image_id"] == "f" * 64 and len(demo.rec.sent("/embed")) == 3
    assert json_body(prompts[-1])["image_id"] == hashlib.sha256(scene_png.read_bytes()).hexdigest()
