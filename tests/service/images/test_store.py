"""The image store on the real tiny bundle: one encoder pass per image, batching, coalescing, NotFound,
and the memory tier re-counting an entry when its CLIP outputs are memoised."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from support import png_bytes

from samclip_bundle.graphs import GRAPHS
from service.errors import NotFound
from service.images.source import ImageSource
from service.tasks.classify import classify
from service.tasks.prompt import Prompt, segment_prompts
from service.timing import Timings

pytestmark = pytest.mark.anyio


def deadline() -> float:
    return time.monotonic() + 60


def graph_calls(engine, graph: str) -> float:
    return engine.metrics.sample("samclip_inference_seconds_count", graph=graph)


async def upload(data: bytes) -> ImageSource:
    return await ImageSource.upload(data)


async def test_warmup_runs_all_graphs_and_ready(make_engine) -> None:
    engine = await make_engine()
    assert engine.ready
    for graph in GRAPHS:
        assert graph_calls(engine, graph) >= 1, graph
    await engine.stop()
    assert not engine.ready


async def test_second_call_on_same_image_skips_encoder(make_engine) -> None:
    engine = await make_engine()
    data = png_bytes(120, 90, seed=0)
    t1, t2, t3 = Timings(), Timings(), Timings()
    first = await engine.images.get(await upload(data), t1, deadline())
    assert not first.cached and t1.cache_hit is False and "encoder" in t1.stages and "decode" in t1.stages
    assert first.image_id == (await upload(data)).key and (first.width, first.height) == (120, 90)
    again = await engine.images.get(await upload(data), t2, deadline())
    by_id = await engine.images.get(ImageSource.by_id(first.image_id.upper()), t3, deadline())
    assert again.cached and by_id.cached and t2.cache_hit and "encoder" not in t2.stages
    assert "decode" not in t2.stages  # a cached image is never decoded again
    assert engine.metrics.sample("samclip_encoder_runs_total") == 1
    await engine.run(segment_prompts, engine.heads, by_id, [Prompt(box=(1, 1, 50, 50))], False, Timings())
    before = engine.images.memory.bytes
    text = await engine.text_embeddings(["cat", "dog"], Timings(), deadline())
    await engine.run(classify, engine.heads, by_id, text, ["cat", "dog"], 2, Timings())
    # CLIP outputs memoised (1 x 64 f32 + 16x16x64 in the cache dtype), patch tokens (16x16x96, same dtype)
    # dropped: the entry shrank
    assert by_id.memo.clip is not None and by_id.memo.patch_tokens is None
    size = by_id.image_embeddings.itemsize  # settings.cache_dtype (float16 by default)
    assert engine.images.memory.bytes == before - 16 * 16 * (96 - 64) * size + 64 * 4
    assert engine.metrics.sample("samclip_encoder_runs_total") == 1
    with pytest.raises(NotFound):
        await engine.images.get(ImageSource.by_id("0" * 64), Timings(), deadline())
    await engine.stop()


async def test_concurrent_images_are_batched_and_duplicates_coalesce(make_engine) -> None:
    engine = await make_engine(max_batch_size=4, max_batch_wait_ms=200)
    sources = [await upload(png_bytes(120, 90, seed=i)) for i in range(4)]
    entries = await asyncio.gather(
        *(engine.images.get(s, Timings(), deadline()) for s in sources + [sources[0]] * 3)
    )
    assert [e.image_id for e in entries[:4]] == [s.key for s in sources]
    assert engine.metrics.sample("samclip_encoder_runs_total") == 4  # 7 requests, 4 distinct images
    assert engine.metrics.sample("samclip_encoder_batch_size_sum") == 4  # warm-up bypasses the batcher
    assert engine.metrics.sample("samclip_encoder_batch_size_count") < 4, "expected a batch > 1"
    solo = await make_engine(max_batch_size=1)
    alone = await solo.images.get(sources[2], Timings(), deadline())
    # the cache stores float16 by default: one rounding step (2**-11 relative) may differ
    np.testing.assert_allclose(entries[2].image_embeddings, alone.image_embeddings, atol=1e-4, rtol=1e-3)
    await engine.stop()
    await solo.stop()


async def test_bad_image_releases_its_queue_slot(make_engine) -> None:
    engine = await make_engine(queue_size=1)
    from service.errors import InvalidImage, UnsupportedMediaType

    for junk in (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"random bytes, not an image"):
        with pytest.raises((InvalidImage, UnsupportedMediaType)):
            await engine.images.get(await upload(junk), Timings(), deadline())
    assert engine.images.batcher.reserved == 0 and engine.images.batcher.depth == 0
    ok = await engine.images.get(await upload(png_bytes(64, 64)), Timings(), deadline())  # the slot is free
    assert not ok.cached
    await engine.stop()
