"""Quality gates of the committed demo bundle, through the real service app (ONNX Runtime backend).

- ``POST /segment?text=red circle`` on generated scenes with exactly one red circle among other shapes returns
  a mask with IoU >= 0.7 against the circle;
- ``POST /classify`` with the shape names ranks the right shape first on >= 90% of single-shape images.
Skipped when the bundle (``training/demo_bundle``, written by ``python -m training.demo``) is absent.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.shapes import SHAPES, make_scene

BUNDLE = Path(__file__).resolve().parents[2] / "training" / "demo_bundle"
pytestmark = [
    pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(), reason="demo bundle not built"),
    # Known gap (issue 7, training/REPORT.md): the committed demo's tiny CLIP teacher is too weak, so these
    # gates are not met yet. strict: the day they pass, this marker must go.
    pytest.mark.xfail(strict=True, reason="demo bundle below the issue-7 quality gates; see training/REPORT.md"),
]


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _one_red_circle_scenes(n: int):
    out, seed = [], 50_000
    while len(out) < n:
        scene = make_scene(seed, min_objects=3, max_objects=4)
        seed += 1
        red = [i for i in scene.instances if (i.color, i.shape) == ("red", "circle")]
        if len(red) == 1 and len(scene.instances) >= 3:
            out.append((scene, red[0].mask))
    return out


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(bundle=BUNDLE))) as c:
        for _ in range(600):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        yield c


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts}).astype(bool)


def test_segment_red_circle_iou(client):
    ious = []
    for scene, gt in _one_red_circle_scenes(10):
        r = client.post(
            "/segment",
            params={"text": "red circle"},
            files={"image": ("x.png", _png(scene.image), "image/png")},
        )
        assert r.status_code == 200, r.text
        mask = _decode(r.json()["masks"][0]["segmentation"])
        ious.append(float((mask & gt).sum() / max(1, (mask | gt).sum())))
    assert min(ious) >= 0.7, ious


def test_classify_single_shapes(client):
    right, total = 0, 0
    for k, shape in enumerate(SHAPES):
        for i in range(10):
            scene = make_scene(90_000 + 1000 * k + i, min_objects=1, max_objects=1, shapes=(shape,))
            r = client.post(
                "/classify",
                params={"labels": list(SHAPES)},
                files={"image": ("x.png", _png(scene.image), "image/png")},
            )
            assert r.status_code == 200, r.text
            right += r.json()["labels"][0]["label"] == shape
            total += 1
    assert right / total >= 0.9, f"{right}/{total}"
