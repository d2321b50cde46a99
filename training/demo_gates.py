"""The demo bundle's quality gates (issue 7), measured through the real service app (its default backend).

- text-segment: ``POST /segment?text=red circle`` on generated scenes holding exactly one red circle among 2-3
  other shapes; IoU of the returned mask with the circle's mask (gate: >= 0.7 on every scene);
- classify: ``POST /classify`` with the three shape names on single-shape images; top-1 accuracy (gate: >= 0.9).

Used by ``tests/training/test_demo_bundle_gates.py`` and by the demo report (``python -m training.demo``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from service.render import decode_rle
from training.data.shapes import SHAPES, Scene, make_scene

SEG_SCENES, CLS_PER_SHAPE = 10, 10
SEG_GATE, CLS_GATE = 0.7, 0.9


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def one_red_circle_scenes(n: int = SEG_SCENES) -> list[tuple[Scene, np.ndarray]]:
    """The first `n` scenes (seeds from 50_000) with 3-4 objects, exactly one of them a red circle:
    [(scene, circle mask (H, W) bool)]."""
    out, seed = [], 50_000
    while len(out) < n:
        scene = make_scene(seed, min_objects=3, max_objects=4)
        seed += 1
        red = [i for i in scene.instances if (i.color, i.shape) == ("red", "circle")]
        if len(red) == 1:
            out.append((scene, red[0].mask))
    return out


def single_shape_scenes(per_shape: int = CLS_PER_SHAPE) -> list[tuple[Scene, str]]:
    """`per_shape` one-object scenes per shape (seeds 90_000 + 1000 * k + i): [(scene, shape name)]."""
    return [
        (make_scene(90_000 + 1000 * k + i, min_objects=1, max_objects=1, shapes=(shape,)), shape)
        for k, shape in enumerate(SHAPES)
        for i in range(per_shape)
    ]


@contextmanager
def service_client(bundle: Path, ready_timeout_s: float = 60.0) -> Iterator:
    """A FastAPI TestClient on the service app serving `bundle`, once /readyz says 200."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(bundle=bundle))) as client:
        deadline = time.time() + ready_timeout_s
        while client.get("/readyz").status_code != 200:
            if time.time() > deadline:
                raise TimeoutError(f"service not ready after {ready_timeout_s} s")
            time.sleep(0.1)
        yield client


def post_image(client, path: str, params: dict, image: np.ndarray) -> dict:
    """POST `image` (H, W, 3) uint8 as a PNG multipart field to `path`; the JSON reply (raises on non-2xx)."""
    r = client.post(path, params=params, files={"image": ("x.png", png_bytes(image), "image/png")})
    r.raise_for_status()
    return r.json()


def segment_ious(client) -> list[float]:
    """IoU per red-circle scene of the /segment?text=red circle mask."""
    ious = []
    for scene, gt in one_red_circle_scenes():
        reply = post_image(client, "/segment", {"text": "red circle"}, scene.image)
        mask = decode_rle(reply["masks"][0]["segmentation"])
        ious.append(float((mask & gt).sum() / max(1, (mask | gt).sum())))
    return ious


def classify_hits(client) -> list[bool]:
    """Per single-shape image: did /classify rank the right shape first?"""
    return [
        post_image(client, "/classify", {"labels": list(SHAPES)}, scene.image)["labels"][0]["label"] == shape
        for scene, shape in single_shape_scenes()
    ]


def measure_gates(bundle: Path) -> dict:
    """Both gates on `bundle`: {"segment_ious": [...], "segment_pass": bool, "classify_acc": float, ...}."""
    with service_client(bundle) as client:
        ious, hits = segment_ious(client), classify_hits(client)
    acc = float(np.mean(hits))
    return {
        "segment_ious": [round(x, 4) for x in ious],
        "segment_pass": min(ious) >= SEG_GATE,
        "classify_acc": acc,
        "classify_n": len(hits),
        "classify_pass": acc >= CLS_GATE,
    }
