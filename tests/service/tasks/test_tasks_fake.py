"""Engine wiring with a scripted fake backend (real tokenizer from the tiny bundle): what the refine step
feeds the SAM decoder, best-IoU selection, the empty-coarse rule, and that blocking backend calls leave the
event loop free."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from support import png_bytes

from service.bundle import Bundle
from service.engine import Engine
from service.images.source import ImageSource
from service.metrics import Metrics
from service.runtime.base import BackendInfo, ClipOutput, DecoderOutput, EncoderOutput
from service.tasks.refine import refine
from service.timing import Timings

pytestmark = pytest.mark.anyio
D, H, C, W = 8, 16, 64, 96  # tiny grid: 16 x 16 patches, low-res 64 x 64


class FakeBackend:
    """Left half of the image 'is' the dog: its patch embeddings equal the dog text embedding (e0)."""

    info = BackendInfo(name="fake")
    metrics = None

    def __init__(self, dog_token: int, encode_sleep: float = 0.0, dog_half: bool = True) -> None:
        self.dog_token = dog_token
        self.dog_half = dog_half
        self.encode_sleep = encode_sleep
        self.decoder_calls: list[dict[str, np.ndarray]] = []

    def encode(self, images: np.ndarray) -> EncoderOutput:
        time.sleep(self.encode_sleep)  # blocking, like a real runtime
        b = len(images)
        return EncoderOutput(np.ones((b, C, H, H), np.float32), np.ones((b, H, H, W), np.float32))

    def clip_head(self, patch_tokens: np.ndarray) -> ClipOutput:
        dense = np.zeros((len(patch_tokens), H, H, D), np.float32)
        dense[:, :, : H // 2, 0 if self.dog_half else 1] = 1.0  # left half -> e0 (dog), or background
        dense[:, :, H // 2 :, 1] = 1.0  # right half -> e1 (background)
        return ClipOutput(np.tile(np.eye(D, dtype=np.float32)[:1], (len(patch_tokens), 1)), dense)

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(input_ids), D), np.float32)
        is_dog = (input_ids == self.dog_token).any(axis=1)
        out[is_dog, 0] = 1.0
        out[~is_dog, 1] = 1.0
        return out

    def decode(
        self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input
    ) -> DecoderOutput:
        self.decoder_calls.append(
            {"coords": point_coords, "labels": point_labels, "mask": mask_input, "has": has_mask_input}
        )
        k = len(point_coords)
        low = np.full((k, 4, 64, 64), -5.0, np.float32)
        low[:, 2, 8:24, 8:24] = 5.0  # output 2 is the "best" one
        iou = np.tile(np.array([0.1, 0.2, 0.9, 0.3], np.float32), (k, 1))
        return DecoderOutput(iou, low)


async def _engine(tiny_bundle, settings, **kw):
    bundle = Bundle.load(tiny_bundle)
    from service.text.tokenizer import ClipTokenizer

    dog = ClipTokenizer.from_bundle(bundle).encode("dog")[0]
    backend = FakeBackend(dog, **kw)
    engine = Engine(bundle, backend, settings, Metrics())
    await engine.start()
    return engine, backend


async def _entry(engine, w: int = 200, h: int = 100):
    source = await ImageSource.upload(png_bytes(w, h))
    return await engine.images.get(source, Timings(), time.monotonic() + 9)


async def _refine(engine, entry, num_points: int):
    classes = await engine.text_embeddings(["dog", *engine.settings.background_prompts], Timings(), 1e18)
    return await engine.run(refine, engine.heads, entry, classes, "dog", num_points, 0, Timings())


async def test_refine_feeds_decoder_points_and_mask_prompt(tiny_bundle, settings) -> None:
    engine, backend = await _engine(tiny_bundle, settings)
    entry = await _entry(engine)
    backend.decoder_calls.clear()
    result = await _refine(engine, entry, 5)
    await engine.stop()

    (call,) = backend.decoder_calls
    assert call["coords"].shape == (1, 6, 2)  # 5 sampled points + SAM's padding point
    np.testing.assert_array_equal(call["labels"], [[1, 1, 1, 1, 1, -1]])
    np.testing.assert_array_equal(call["has"], [1.0])
    mask_in = call["mask"][0, 0]  # (64, 64); image 200x100 -> input 256x128: rows >= 32 are padding
    assert (mask_in[:32, :28] > 0).all() and (mask_in[:32, 36:] < 0).all() and (mask_in[32:] < 0).all()
    # sampled points are in the dog (left) half, inside the image, in original pixels
    assert len(result.points) == 5 and all(x < 100 and y < 100 and lab == 1 for x, y, lab in result.points)
    # the decoder output with the best predicted IoU (index 2) is returned at original size
    assert result.mask.iou_prediction == pytest.approx(0.9)
    assert result.mask.mask.shape == (100, 200)
    ys, xs = np.nonzero(result.mask.mask)  # low-res cells 8..24 -> input px 32..96 -> original px 25..75
    assert 20 <= xs.min() <= 30 and 70 <= xs.max() <= 80 and 20 <= ys.min() <= 30 and 70 <= ys.max() <= 80
    # the coarse CLIP mask is the left half
    assert result.coarse.mask[:, :95].all() and not result.coarse.mask[:, 105:].any()
    assert result.coarse.label == "dog" and result.coarse.score > 0.5


async def test_refine_with_an_empty_coarse_mask_is_empty_and_never_calls_sam(tiny_bundle, settings) -> None:
    engine, backend = await _engine(tiny_bundle, settings, dog_half=False)  # the text wins nowhere
    entry = await _entry(engine)
    backend.decoder_calls.clear()
    result = await _refine(engine, entry, 5)
    await engine.stop()
    assert backend.decoder_calls == []  # no mask grown from a point the text did not select
    assert result.points == [] and not result.mask.mask.any() and result.mask.score == 0.0
    assert not result.coarse.mask.any() and result.coarse.score == 0.0


async def test_event_loop_stays_free_during_inference(tiny_bundle, settings) -> None:
    engine, _ = await _engine(tiny_bundle, settings, encode_sleep=0.4)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    t0 = time.monotonic()
    await _entry(engine)
    elapsed = time.monotonic() - t0
    beat.cancel()
    await engine.stop()
    assert elapsed >= 0.4
    assert ticks >= 15, f"event loop blocked: only {ticks} heartbeats in {elapsed:.2f}s"


async def test_image_id_of_an_image_still_encoding_joins_it(tiny_bundle, settings) -> None:
    engine, _ = await _engine(tiny_bundle, settings, encode_sleep=0.3)
    source = await ImageSource.upload(png_bytes(64, 48))
    first = asyncio.create_task(engine.images.get(source, Timings(), time.monotonic() + 9))
    await asyncio.sleep(0.1)  # the upload is in the encoder now; a client already uses its id
    by_id = await engine.images.get(ImageSource.by_id(source.key), Timings(), time.monotonic() + 9)
    entry = await first
    assert by_id.image_id == entry.image_id and (by_id.width, by_id.height) == (64, 48)
    assert engine.metrics.sample("samclip_encoder_runs_total") == 1
    await engine.stop()
