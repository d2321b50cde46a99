"""The interactive fast paths against the plain ones on real entries of the tiny bundle: mask postprocessing
(Heads.masks vs Heads.plain_masks) and float16 cache storage (vs float32), with the parity gates of issue 16."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import png_bytes

from samclip_bundle.parity import mask_iou
from service.images.entry import from_bytes, to_bytes
from service.images.source import ImageSource
from service.tasks.prompt import Prompt, segment_prompts
from service.tasks.textseg import segment_text
from service.timing import Timings

pytestmark = pytest.mark.anyio
PROMPTS = [
    Prompt(points=((40.0, 30.0, 1),)),
    Prompt(box=(10.0, 5.0, 150.0, 90.0)),
    Prompt(points=((5.0, 80.0, 1), (120.0, 20.0, 0))),
]


async def entry_of(engine, data: bytes):
    return await engine.images.get(await ImageSource.upload(data), Timings(), time.monotonic() + 60)


@pytest.mark.parametrize("size", [(160, 100), (97, 301)])
async def test_fast_masks_equal_the_plain_path(make_engine, size: tuple[int, int]) -> None:
    """Heads.masks (fast) == Heads.plain_masks (`postprocess_masks(...) > 0`) on real decoder logits, but for
    pixels within float32 rounding of 0 (documented: at most 1e-5 of them)."""
    engine = await make_engine()
    heads = engine.heads
    entry = await entry_of(engine, png_bytes(*size, seed=11))
    groups = await engine.run(segment_prompts, heads, entry, PROMPTS, True, Timings())
    for group in groups:
        low = np.stack([m.low_res_logits for m in group])
        scores = np.array([m.score for m in group])
        plain = heads.plain_masks(entry, low, scores)
        for fast, ref in zip(group, plain, strict=True):
            assert fast.mask.shape == ref.mask.shape == (size[1], size[0])
            assert fast.mask.flags.f_contiguous and fast.score == ref.score
            assert np.count_nonzero(fast.mask != ref.mask) <= 1e-5 * ref.mask.size
    await engine.stop()


async def test_float16_cache_halves_entries_within_the_parity_gates(make_engine, settings) -> None:
    """Same image through float32 and float16 storage: the entry's arrays are float16 and half the bytes
    (also after a shared-tier round trip); prompt masks IoU >= 0.99 and text masks IoU >= 0.98 against float32
    storage (the gates of issue 16)."""
    data = png_bytes(160, 100, seed=12)
    texts = ["dog", "grass", "sky"]
    out = {}
    for dtype in ("float32", "float16"):
        engine = await make_engine(cache_dtype=dtype)
        entry = await entry_of(engine, data)
        fresh = entry.nbytes
        classes = await engine.text_embeddings(
            [*texts, *settings.background_prompts], Timings(), time.monotonic() + 60
        )
        seg = await engine.run(segment_text, engine.heads, entry, classes, texts, Timings())
        prompt = await engine.run(segment_prompts, engine.heads, entry, PROMPTS, True, Timings())
        out[dtype] = (entry, fresh, seg, [m for g in prompt for m in g])
        await engine.stop()
    (e32, fresh32, seg32, sam32), (e16, fresh16, seg16, sam16) = out["float32"], out["float16"]
    assert e16.image_embeddings.dtype == np.float16 and e16.memo.clip.patch_embeddings.dtype == np.float16
    assert e32.image_embeddings.dtype == np.float32 and e32.memo.clip.patch_embeddings.dtype == np.float32
    overhead = 512
    assert fresh16 - overhead == (fresh32 - overhead) // 2
    assert e16.nbytes < 0.51 * e32.nbytes + overhead
    back = from_bytes(e16.image_id, to_bytes(e16))
    assert back.image_embeddings.dtype == np.float16 and back.memo.clip.patch_embeddings.dtype == np.float16
    assert back.nbytes == e16.nbytes
    assert np.mean([mask_iou(a.mask, b.mask) for a, b in zip(sam32, sam16, strict=True)]) >= 0.99
    assert np.mean([mask_iou(a.mask, b.mask) for a, b in zip(seg32, seg16, strict=True)]) >= 0.98


async def test_setting_postprocess_plain_runs_the_plain_path(make_engine, settings) -> None:
    """SAMCLIP_POSTPROCESS=plain (for benchmarks): the same masks from the original-size float path, which
    yields row-major masks, for prompts and text-segment alike."""
    data = png_bytes(150, 110, seed=13)
    out = {}
    for mode in ("fast", "plain"):
        engine = await make_engine(postprocess=mode)
        entry = await entry_of(engine, data)
        classes = await engine.text_embeddings(
            ["dog", "grass", "background"], Timings(), time.monotonic() + 60
        )
        seg = await engine.run(segment_text, engine.heads, entry, classes, ["dog", "grass"], Timings())
        groups = await engine.run(segment_prompts, engine.heads, entry, PROMPTS, False, Timings())
        out[mode] = [*seg, *(m for g in groups for m in g)]
        await engine.stop()
    for fast, plain in zip(out["fast"], out["plain"], strict=True):
        assert fast.mask.flags.f_contiguous and plain.mask.flags.c_contiguous
        assert np.count_nonzero(fast.mask != plain.mask) <= 1e-5 * plain.mask.size


@pytest.mark.parametrize("kind", ["blobs", "noise"])
async def test_masks_as_runs_render_like_the_plain_path(make_engine, kind: str) -> None:
    """Heads.masks on logits shaped like a trained SAM's (a few blobs) holds each mask as RLE runs (no bitmap
    until one is read) and renders the same JSON and PNG as the plain path; on noise it keeps the bitmap."""
    from service import render

    engine = await make_engine()
    heads = engine.heads
    entry = await entry_of(engine, png_bytes(900, 600, seed=13))  # larger than the input frame: runs apply
    grid = heads.mask_grid
    yy, xx = np.mgrid[0:grid, 0:grid] / grid
    blobs = np.exp(-((yy - 0.3) ** 2 + (xx - 0.4) ** 2) / 0.02) + np.exp(
        -((yy - 0.5) ** 2 + (xx - 0.8) ** 2) / 0.01
    )
    noise = np.random.default_rng(14).normal(size=(grid, grid))
    low = ((blobs - 0.5) if kind == "blobs" else noise).astype(np.float32)[None]
    (fast,) = heads.masks(entry, low, np.array([0.9]), Timings())
    (plain,) = heads.plain_masks(entry, low, np.array([0.9]))
    assert (fast.runs is not None) == (kind == "blobs")
    assert render.mask_to_json(fast) == render.mask_to_json(plain)
    assert render.png([fast], 0, entry) == render.png([plain], 0, entry)
    np.testing.assert_array_equal(fast.mask, plain.mask)
    await engine.stop()
