"""The tasks on real entries of the tiny bundle: classify against the torch reference, text-segment, refine;
the CLIP head and label embeddings are computed once."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import png_bytes

from service.images.decode import decode_image
from service.images.source import ImageSource
from service.images.transforms import preprocess
from service.tasks.classify import classify
from service.tasks.refine import refine
from service.tasks.textseg import segment_text
from service.text.templates import expand
from service.timing import Timings

pytestmark = pytest.mark.anyio


def deadline() -> float:
    return time.monotonic() + 60


def graph_calls(engine, graph: str) -> float:
    return engine.metrics.sample("samclip_inference_seconds_count", graph=graph)


async def entry_of(engine, data: bytes):
    return await engine.images.get(await ImageSource.upload(data), Timings(), deadline())


async def test_classify_matches_torch_reference(make_engine, tiny_model, settings) -> None:
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    engine = await make_engine()
    data = png_bytes(200, 130, seed=5)
    entry = await entry_of(engine, data)
    labels = ["a dog", "a cat", "a red car"]
    text = await engine.text_embeddings(labels, Timings(), deadline())
    scores = await engine.run(classify, engine.heads, entry, text, labels, 2, Timings())
    assert len(scores) == 2 and scores[0].probability >= scores[1].probability

    rgb = decode_image(data, settings).rgb
    x, _ = preprocess(rgb, 256, engine.bundle.pixel_mean, engine.bundle.pixel_std)
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

    text_calls, head_calls = graph_calls(engine, "text_encoder"), graph_calls(engine, "clip_head")
    again = await engine.text_embeddings(list(reversed(labels)), Timings(), deadline())
    await engine.run(classify, engine.heads, entry, again, list(reversed(labels)), 3, Timings())
    assert graph_calls(engine, "text_encoder") == text_calls  # label embeddings cached
    assert graph_calls(engine, "clip_head") == head_calls  # CLIP head memoised on the entry
    await engine.stop()


async def test_segment_text_and_refine(make_engine, settings) -> None:
    engine = await make_engine()
    entry = await entry_of(engine, png_bytes(160, 100, seed=7))
    bg = settings.background_prompts

    async def texts(*names: str) -> np.ndarray:
        return await engine.text_embeddings([*names, *bg], Timings(), deadline())

    masks = await engine.run(
        segment_text, engine.heads, entry, await texts("dog", "grass"), ["dog", "grass"], Timings()
    )
    assert [m.label for m in masks] == ["dog", "grass"]
    assert all(m.mask.shape == (100, 160) and m.mask.dtype == bool for m in masks)
    assert not (masks[0].mask & masks[1].mask).any()
    assert all(0.0 <= m.score <= 1.0 for m in masks)

    classes = await texts("dog")
    a = await engine.run(refine, engine.heads, entry, classes, "dog", 6, 3, Timings())
    b = await engine.run(refine, engine.heads, entry, classes, "dog", 6, 3, Timings())
    assert a.points == b.points and np.array_equal(a.mask.mask, b.mask.mask)
    assert all(0 <= x <= 160 and 0 <= y <= 100 and lab == 1 for x, y, lab in a.points)
    assert a.mask.mask.shape == a.coarse.mask.shape == (100, 160)
    (single,) = await engine.run(segment_text, engine.heads, entry, classes, ["dog"], Timings())
    np.testing.assert_array_equal(a.coarse.mask, single.mask)
    if a.points:  # the text won some cells: SAM refined them
        assert 1 <= len(a.points) <= 6 and a.mask.label == "dog" and a.mask.low_res_logits is not None
    else:  # documented empty result
        assert not a.mask.mask.any() and a.mask.score == 0.0
    await engine.stop()
