"""Predictor on the real tiny bundle: one encoder pass per image, batching, coalescing, classify/text/refine."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from service.bundle import Bundle
from service.errors import InvalidInput, NotFound
from service.metrics import Metrics
from service.pipeline.decode import decode_image
from service.pipeline.predictor import Predictor
from service.pipeline.prompts import PromptRequest
from service.runtime.onnxruntime import OnnxRuntimeBackend
from service.timing import Timings

pytestmark = pytest.mark.anyio


def _png(seed: int, size=(120, 90)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _deadline() -> float:
    return time.monotonic() + 60


def _graph_calls(metrics: Metrics, graph: str) -> float:
    return metrics.sample("samclip_inference_seconds_count", graph=graph)


@pytest.fixture
def make_predictor(tiny_bundle, settings_factory):
    """Async factory: a started Predictor on the real tiny bundle (tests await predictor.stop())."""

    async def factory(**overrides):
        settings = settings_factory(**overrides)
        bundle = Bundle.load(tiny_bundle)
        metrics = Metrics()
        predictor = Predictor(bundle, OnnxRuntimeBackend(bundle, settings), settings, metrics)
        await predictor.start()
        return predictor, metrics, settings

    return factory


async def test_warmup_runs_all_graphs_and_ready(make_predictor) -> None:
    predictor, metrics, _ = await make_predictor()
    assert predictor.ready
    for graph in ("encoder", "clip_head", "text_encoder", "sam_decoder"):
        assert _graph_calls(metrics, graph) >= 1, graph
    await predictor.stop()
    assert not predictor.ready


async def test_second_call_on_same_image_skips_encoder(make_predictor) -> None:
    predictor, metrics, settings = await make_predictor()
    image = decode_image(_png(0), settings)
    t1, t2, t3 = Timings(), Timings(), Timings()
    first = await predictor.get_entry(image=image, image_id=None, timings=t1, deadline=_deadline())
    assert not first.cached and t1.cache_hit is False and "encoder" in t1.stages
    assert first.image_id == image.sha256 and (first.width, first.height) == (120, 90)
    again = await predictor.get_entry(image=image, image_id=None, timings=t2, deadline=_deadline())
    by_id = await predictor.get_entry(image=None, image_id=image.sha256, timings=t3, deadline=_deadline())
    assert again.cached and by_id.cached and t2.cache_hit and "encoder" not in t2.stages
    assert metrics.sample("samclip_encoder_runs_total") == 1
    await predictor.segment_prompts(by_id, PromptRequest(boxes=[(1, 1, 50, 50)]), Timings())
    before = predictor.cache.bytes
    await predictor.classify(by_id, ["cat", "dog"], 2, Timings())
    # CLIP outputs memoised (16x16x64 f32), patch tokens (16x16x96 f32) dropped: the entry shrank
    assert by_id.memo.clip is not None and by_id.memo.patch_tokens is None
    assert predictor.cache.bytes == before - 16 * 16 * (96 - 64) * 4 + 64 * 4
    await predictor.refine(by_id, "cat", 4, 0, Timings())
    assert metrics.sample("samclip_encoder_runs_total") == 1
    with pytest.raises(NotFound):
        await predictor.get_entry(image=None, image_id="0" * 64, timings=Timings(), deadline=_deadline())
    await predictor.stop()


async def test_concurrent_images_are_batched_and_duplicates_coalesce(make_predictor) -> None:
    predictor, metrics, settings = await make_predictor(max_batch_size=4, max_batch_wait_ms=200)
    images = [decode_image(_png(i), settings) for i in range(4)]
    dupes = [images[0]] * 3
    entries = await asyncio.gather(
        *(
            predictor.get_entry(image=im, image_id=None, timings=Timings(), deadline=_deadline())
            for im in images + dupes
        )
    )
    assert [e.image_id for e in entries[:4]] == [im.sha256 for im in images]
    assert metrics.sample("samclip_encoder_runs_total") == 4  # 7 requests, 4 distinct images
    batches = metrics.sample("samclip_encoder_batch_size_count")  # warm-up bypasses the batcher
    assert metrics.sample("samclip_encoder_batch_size_sum") == 4
    assert batches < 4, "expected at least one encoder batch > 1"
    # entries computed in a batch equal entries computed alone
    solo_pred, _, _ = await make_predictor(max_batch_size=1)
    solo = await solo_pred.get_entry(image=images[2], image_id=None, timings=Timings(), deadline=_deadline())
    np.testing.assert_allclose(entries[2].image_embeddings, solo.image_embeddings, atol=1e-4)
    await predictor.stop()
    await solo_pred.stop()


async def test_classify_matches_torch_reference(make_predictor, tiny_model) -> None:
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from service.pipeline.templates import expand
    from service.pipeline.transforms import preprocess

    predictor, metrics, settings = await make_predictor()
    image = decode_image(_png(5, (200, 130)), settings)
    entry = await predictor.get_entry(image=image, image_id=None, timings=Timings(), deadline=_deadline())
    labels = ["a dog", "a cat", "a red car"]
    scores = await predictor.classify(entry, labels, top_k=2, timings=Timings())
    assert len(scores) == 2 and scores[0].probability >= scores[1].probability

    x, _ = preprocess(image.rgb, 256, predictor.bundle.pixel_mean, predictor.bundle.pixel_std)
    with torch.no_grad():
        _, tokens = tiny_model.image_encoder(torch.from_numpy(x)[None])
        img, _ = tiny_model.clip_head(tokens)
        classes = []
        for label in labels:
            t = tiny_model.text_encoder(open_clip.tokenize(expand(label)))
            t = t / t.norm(dim=-1, keepdim=True)
            t = t.mean(0)
            classes.append(t / t.norm())
        logits = tiny_model.logit_scale.exp() * img[0] @ torch.stack(classes).T
        probs = logits.softmax(-1).numpy()
    order = np.argsort(-probs)
    assert [s.label for s in scores] == [labels[i] for i in order[:2]]
    np.testing.assert_allclose([s.probability for s in scores], probs[order[:2]], atol=1e-3)

    text_calls = _graph_calls(metrics, "text_encoder")
    head_calls = _graph_calls(metrics, "clip_head")
    await predictor.classify(entry, list(reversed(labels)), top_k=3, timings=Timings())
    assert _graph_calls(metrics, "text_encoder") == text_calls  # label embeddings cached
    assert _graph_calls(metrics, "clip_head") == head_calls  # CLIP head memoised on the entry
    await predictor.stop()


async def test_segment_text_and_refine(make_predictor) -> None:
    predictor, _, settings = await make_predictor()
    image = decode_image(_png(7, (160, 100)), settings)
    entry = await predictor.get_entry(image=image, image_id=None, timings=Timings(), deadline=_deadline())
    masks = await predictor.segment_text(entry, ["dog", "grass"], Timings())
    assert [m.label for m in masks] == ["dog", "grass"]
    assert all(m.mask.shape == (100, 160) and m.mask.dtype == bool for m in masks)
    assert not (masks[0].mask & masks[1].mask).any()
    assert all(0.0 <= m.score <= 1.0 for m in masks)
    repeated = await predictor.segment_text(entry, ["dog", "grass", "dog"], Timings())
    np.testing.assert_array_equal(repeated[2].mask, masks[0].mask)
    np.testing.assert_array_equal(repeated[1].mask, masks[1].mask)

    a = await predictor.refine(entry, "dog", 6, 3, Timings())
    b = await predictor.refine(entry, "dog", 6, 3, Timings())
    assert a.points == b.points and np.array_equal(a.mask.mask, b.mask.mask)
    assert 1 <= len(a.points) <= 6 and all(
        0 <= x <= 160 and 0 <= y <= 100 and lab == 1 for x, y, lab in a.points
    )
    assert a.mask.mask.shape == a.coarse.mask.shape == (100, 160)
    assert a.mask.iou_prediction is not None and a.mask.label == "dog"
    single = await predictor.segment_text(entry, ["dog"], Timings())
    np.testing.assert_array_equal(a.coarse.mask, single[0].mask)
    await predictor.stop()


async def test_input_validation(make_predictor) -> None:
    predictor, _, settings = await make_predictor(max_texts=2)
    image = decode_image(_png(8), settings)
    entry = await predictor.get_entry(image=image, image_id=None, timings=Timings(), deadline=_deadline())
    with pytest.raises(InvalidInput):
        await predictor.classify(entry, [], 1, Timings())
    with pytest.raises(InvalidInput):
        await predictor.segment_text(entry, ["a", "b", "c"], Timings())
    with pytest.raises(InvalidInput):
        await predictor.segment_text(entry, ["  "], Timings())
    with pytest.raises(InvalidInput, match="outside"):
        await predictor.segment_prompts(entry, PromptRequest(boxes=[(0, 0, 500, 10)]), Timings())
    with pytest.raises(InvalidInput):
        await predictor.refine(entry, "dog", 0, 0, Timings())
    with pytest.raises(InvalidInput):
        await predictor.get_entry(image=None, image_id=None, timings=Timings(), deadline=_deadline())
    await predictor.stop()
