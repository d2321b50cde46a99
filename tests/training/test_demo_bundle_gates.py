"""Quality gates of the committed demo bundle, through the real service app (training/demo_gates.py).

- ``POST /segment?text=red circle`` on generated scenes with exactly one red circle among other shapes returns
  a mask with IoU >= 0.7 against the circle;
- ``POST /classify`` with the shape names ranks the right shape first on >= 90% of single-shape images.
Skipped when the bundle (``training/demo_bundle``, written by ``python -m training.demo``) is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from samclip_bundle.manifest import Manifest
from training import demo_gates

BUNDLE = Path(__file__).resolve().parents[2] / "training" / "demo_bundle"
needs_bundle = pytest.mark.skipif(not Manifest.exists(BUNDLE), reason="demo bundle not built")


@pytest.fixture(scope="module")
def client():
    with demo_gates.service_client(BUNDLE) as c:
        yield c


def test_gate_scenes_are_what_the_gate_says():
    scenes = demo_gates.one_red_circle_scenes()
    assert len(scenes) == demo_gates.SEG_SCENES
    for scene, mask in scenes:
        assert 3 <= len(scene.instances) <= 4 and mask.any()
        assert [(i.color, i.shape) for i in scene.instances].count(("red", "circle")) == 1
    singles = demo_gates.single_shape_scenes()
    assert all(len(s.instances) == 1 and s.instances[0].shape == shape for s, shape in singles)


@needs_bundle
def test_segment_red_circle_iou(client):
    ious = demo_gates.segment_ious(client)
    assert min(ious) >= demo_gates.SEG_GATE, ious


@needs_bundle
def test_classify_single_shapes(client):
    hits = demo_gates.classify_hits(client)
    assert sum(hits) / len(hits) >= demo_gates.CLS_GATE, f"{sum(hits)}/{len(hits)}"
