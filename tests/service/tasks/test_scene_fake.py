"""Segment-everything labels and text -> instances with a scripted backend (real tokenizer and engine, tiny
bundle geometry: S = 256, 16 x 16 patches, low-res 64 x 64) whose CLIP dense features and decoder outputs are
known: the scene holds two objects, so what each mask is labelled, which boxes reach the decoder and in how
many calls can be checked exactly."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import png_bytes
from test_tasks_fake import FakeBackend

from service.bundle import Bundle
from service.engine import Engine
from service.errors import DeadlineExceeded
from service.images.source import ImageSource
from service.metrics import Metrics
from service.runtime.base import ClipOutput, DecoderOutput
from service.tasks.everything import EverythingParams, segment_everything
from service.tasks.instances import segment_instances
from service.text.tokenizer import ClipTokenizer
from service.timing import Timings

pytestmark = pytest.mark.anyio
D, GRID, LOW = 8, 16, 64
RUNS = "samclip_encoder_runs_total"
# Image 200 x 100 -> INPUT 256 x 128: patch rows 0..7 are the image. Patch rectangles (rows, cols):
LEFT = (slice(2, 6), slice(1, 5))  # INPUT px x 16..80, y 32..96 -> ORIGINAL x 12.5..62.5, y 25..75
RIGHT = (slice(2, 6), slice(9, 15))  # INPUT px x 144..240 -> ORIGINAL x 112.5..187.5 (the larger one)


class SceneBackend(FakeBackend):
    """Dense CLIP features: each (rectangle, channel) of `objects` is e_channel, the rest e1 (what every text
    but "dog" embeds to). Decoder: a point inside an object gives that object's rectangle (outputs 1 and 2,
    predicted IoU 0.95 and 0.9; output 3 empty, 0.2); a box prompt gives the box, predicted IoU falling with
    its width. Logits are +-20."""

    def __init__(self, dog_token: int, objects: list[tuple[tuple[slice, slice], int]]) -> None:
        super().__init__(dog_token)
        self.objects = objects

    def clip_head(self, patch_tokens: np.ndarray) -> ClipOutput:
        dense = np.zeros((len(patch_tokens), GRID, GRID, D), np.float32)
        dense[..., 1] = 1.0
        for (rows, cols), channel in self.objects:
            dense[:, rows, cols] = np.eye(D, dtype=np.float32)[channel]
        return ClipOutput(np.tile(np.eye(D, dtype=np.float32)[:1], (len(patch_tokens), 1)), dense)

    def decode(
        self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input
    ) -> DecoderOutput:
        self.decoder_calls.append({"coords": point_coords, "labels": point_labels})
        k = len(point_coords)
        low = np.full((k, 4, LOW, LOW), -20.0, np.float32)
        iou = np.tile(np.array([0.5, 0.95, 0.9, 0.2], np.float32), (k, 1))
        for i, (coords, labels) in enumerate(zip(point_coords, point_labels, strict=True)):
            if labels[0] == 2:  # a box: corners (labels 2, 3) in INPUT px; the low-res frame is 4x coarser
                (x0, y0), (x1, y1) = np.round(coords / 4).astype(int)
                low[i, 0, y0:y1, x0:x1] = 20.0
                iou[i, 0] = 1.0 - (x1 - x0) / 100
                continue
            row, col = (coords[0, ::-1] // 16).astype(int)
            for (rows, cols), _ in self.objects:
                if rows.start <= row < rows.stop and cols.start <= col < cols.stop:
                    low[i, 1:3, 4 * rows.start : 4 * rows.stop, 4 * cols.start : 4 * cols.stop] = 20.0
        return DecoderOutput(iou, low)


async def scene_engine(tiny_bundle, settings, objects):
    bundle = Bundle.load(tiny_bundle)
    backend = SceneBackend(ClipTokenizer.from_bundle(bundle).encode("dog")[0], objects)
    engine = Engine(bundle, backend, settings, Metrics())
    await engine.start()
    entry = await engine.images.get(
        await ImageSource.upload(png_bytes(200, 100)), Timings(), time.monotonic() + 9
    )
    backend.decoder_calls.clear()
    return engine, backend, entry


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def near(box: tuple[int, ...], expected: tuple[float, ...], tolerance: float = 3.0) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(box, expected, strict=True))


async def test_everything_labels_each_mask_from_the_features_pooled_inside_it(tiny_bundle, settings) -> None:
    engine, backend, entry = await scene_engine(tiny_bundle, settings, [(LEFT, 0), (RIGHT, 1)])
    labels = ["dog", "cat"]
    embeddings = await engine.text_embeddings(labels, Timings(), time.monotonic() + 9)
    params = EverythingParams(points_per_side=8, points_per_batch=16)
    results = await engine.run(segment_everything, engine.heads, entry, params, embeddings, labels, Timings())
    runs = engine.metrics.sample(RUNS)
    await engine.stop()

    assert runs == 1, "labels come from the same single encoder pass"
    assert [len(c["coords"]) for c in backend.decoder_calls] == [16, 16, 16, 16]  # 64 grid points, 4 calls
    assert all((c["labels"] == [1.0, -1.0]).all() for c in backend.decoder_calls)
    # outputs 1 and 2 of every point on an object are the same mask: NMS keeps one per object, best IoU
    assert len(results) == 2 and [r.score for r in results] == pytest.approx([0.95, 0.95])
    by_side = sorted(results, key=lambda r: box_of(r.mask)[0])
    assert near(box_of(by_side[0].mask), (12.5, 25, 62, 74.5)) and near(
        box_of(by_side[1].mask), (112.5, 25, 187, 74.5)
    )
    assert [r.label for r in by_side] == ["dog", "cat"]
    assert all(r.label_score > 0.99 and r.stability_score > 0.9 for r in results)
    for r in results:  # the grid point that made the mask lies on it
        x0, y0, x1, y1 = box_of(r.mask)
        assert x0 - 1 <= r.point[0] <= x1 + 1 and y0 - 1 <= r.point[1] <= y1 + 1


async def test_everything_without_labels_leaves_them_empty(tiny_bundle, settings) -> None:
    engine, backend, entry = await scene_engine(tiny_bundle, settings, [(LEFT, 0)])
    params = EverythingParams(points_per_side=4, points_per_batch=64, max_masks=5)
    results = await engine.run(segment_everything, engine.heads, entry, params, None, None, Timings())
    await engine.stop()
    assert len(backend.decoder_calls) == 1 and len(results) == 1
    assert results[0].label is None and results[0].label_score is None


async def test_two_objects_of_one_text_are_two_instances_from_one_decoder_call(tiny_bundle, settings) -> None:
    engine, backend, entry = await scene_engine(tiny_bundle, settings, [(LEFT, 0), (RIGHT, 0)])
    texts = ["dog"]
    classes = await engine.text_embeddings([*texts, "background"], Timings(), time.monotonic() + 9)

    async def instances(min_area: int, max_instances: int):
        backend.decoder_calls.clear()
        return await engine.run(
            segment_instances, engine.heads, entry, classes, texts, min_area, max_instances, Timings()
        )

    both = await instances(0, 10)
    assert len(backend.decoder_calls) == 1, "all boxes in one batched decoder call"
    (call,) = backend.decoder_calls
    assert call["coords"].shape == (2, 2, 2) and (call["labels"] == [2.0, 3.0]).all()
    assert [(r.label, r.instance) for r in both] == [("dog", 0), ("dog", 1)]
    assert both[0].score > both[1].score  # the narrower (left) box has the higher predicted IoU here
    assert near(box_of(both[0].mask), (12.5, 25, 62, 74.5), 4) and near(
        box_of(both[1].mask), (112.5, 25, 187, 74.5), 4
    )
    assert all(r.text_score > 0.9 and r.iou_prediction == r.score for r in both)
    assert not (both[0].mask & both[1].mask).any()

    area_left, area_right = int(both[0].mask.sum()), int(both[1].mask.sum())
    assert area_left < area_right
    big_only = await instances(area_left + 600, 10)  # min_area between the components' sizes
    assert len(big_only) == 1 and near(box_of(big_only[0].mask), (112.5, 25, 187, 74.5), 4)
    largest = await instances(0, 1)
    assert len(largest) == 1 and largest[0].instance == 0 and box_of(largest[0].mask)[0] > 100
    assert len(backend.decoder_calls) == 1 and len(backend.decoder_calls[0]["coords"]) == 1
    nothing = await instances(10**6, 10)
    await engine.stop()
    assert nothing == [] and backend.decoder_calls == []


async def test_instances_follow_the_request_order_of_texts(tiny_bundle, settings) -> None:
    engine, backend, entry = await scene_engine(tiny_bundle, settings, [(LEFT, 0)])
    texts = ["cat", "dog"]  # "cat" embeds like "background" and comes first: it wins every non-dog pixel
    classes = await engine.text_embeddings([*texts, "background"], Timings(), time.monotonic() + 9)
    found = await engine.run(segment_instances, engine.heads, entry, classes, texts, 0, 10, Timings())
    await engine.stop()
    assert [(r.label, r.instance) for r in found] == [("cat", 0), ("dog", 0)]
    (call,) = backend.decoder_calls
    assert len(call["coords"]) == 2
    assert near(box_of(found[1].mask), (12.5, 25, 62, 74.5), 4) and found[0].mask.sum() > 10_000


async def test_everything_stops_at_the_deadline(tiny_bundle, settings) -> None:
    engine, backend, entry = await scene_engine(tiny_bundle, settings, [(LEFT, 0)])
    params = EverythingParams(points_per_side=8, points_per_batch=16)
    with pytest.raises(DeadlineExceeded):
        await engine.run(
            segment_everything, engine.heads, entry, params, None, None, Timings(), time.monotonic() - 1
        )
    await engine.stop()
    assert backend.decoder_calls == [], "no decoder call once the deadline has passed"
