"""The Predictor: image -> cache -> (miss) batched encoder -> CLIP head / SAM decoder -> masks and labels.

ONE encoder pass per image: `get_entry` looks the image up in the embedding cache (key: sha256 of the uploaded
bytes + bundle fingerprint; the public `image_id` is that sha256 hex) and only on a miss preprocesses it and
sends it through the dynamic batcher to `backend.encode`. Images from HTTP arrive undecoded (`EncodedImage`):
`admit` reserves an encoder-queue slot before any decode (429 at once when full) and the decode + preprocess
run inside a bounded `DecodeGate` (see admission.py); a cached or in-flight image is never decoded again.
The entry keeps image_embeddings (1, C, h, w) and patch_tokens (1, h, w, W) as float32; the CLIP head outputs
are computed lazily, once per entry, and memoised (then the patch tokens, needed by nothing else, are dropped
and the cache re-counts the entry's bytes).
Text embeddings (80-template ensembles, see templates.py) live in an LRU keyed by the stripped label.
Every blocking backend call runs in a thread pool (one lock per graph) so the event loop stays free.
Deadlines are `time.monotonic()` seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from service.cache import EmbeddingCache, LRUCache
from service.errors import InferenceFailed, InvalidInput, NotFound
from service.pipeline import prompts as prompt_mod
from service.pipeline import textseg
from service.pipeline.admission import DecodeGate, EncodedImage, decode_slots
from service.pipeline.decode import DecodedImage, decode_image
from service.pipeline.results import LabelScore, MaskResult, RefineResult
from service.pipeline.templates import ensemble, expand
from service.pipeline.tokenizer import ClipTokenizer
from service.pipeline.transforms import postprocess_masks, preprocess, unmap_coords
from service.runtime.base import ClipOutput
from service.runtime.batcher import Batcher
from service.timing import Timings

__all__ = ["ImageEntry", "LabelScore", "MaskResult", "Predictor", "RefineResult"]

log = logging.getLogger(__name__)
T = TypeVar("T")
TEXT_BATCH = 256  # rows per text-encoder call


@dataclass
class _Memo:
    """State shared by every copy of one cached entry. patch_tokens (1, h, w, W) f32 is dropped once the CLIP
    head outputs (its only consumer) are memoised, so a used entry holds the smaller of the two."""

    patch_tokens: np.ndarray | None = None
    clip: ClipOutput | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class ImageEntry:
    """A cached image. image_id = sha256 hex of the uploaded bytes; width/height = ORIGINAL size;
    input_size = (new_h, new_w) after resize-longest-side; cached = this request found it in the cache.
    image_embeddings (1, C, h, w) f32 (SAM decoder input, always kept); memo: patch tokens / CLIP outputs.
    Arrays are stored as float32 (no float16 storage: it would break exact parity with SamPredictor)."""

    image_id: str
    width: int
    height: int
    input_size: tuple[int, int]
    image_embeddings: np.ndarray = field(repr=False)
    memo: _Memo = field(repr=False)
    cached: bool = False

    @property
    def original_size(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def nbytes(self) -> int:
        clip, tokens = self.memo.clip, self.memo.patch_tokens
        extra = 0 if clip is None else clip.image_embedding.nbytes + clip.patch_embeddings.nbytes
        extra += 0 if tokens is None else tokens.nbytes
        return int(self.image_embeddings.nbytes + extra + 512)


class Predictor:
    """See service/PIPELINE.md. metrics needs observe_graph, observe_batch, set_queue_depth, cache_hit, cache_miss,
    set_cache_bytes and an `encoder_runs` counter."""

    def __init__(self, bundle: Any, backend: Any, settings: Any, metrics: Any) -> None:
        self.bundle, self.backend, self.settings, self.metrics = bundle, backend, settings, metrics
        if getattr(backend, "metrics", False) is None:
            backend.metrics = metrics
        self.image_size = bundle.image_size
        self.mask_grid = 4 * bundle.embed_grid
        self.logit_scale = bundle.logit_scale
        self.tokenizer = ClipTokenizer.from_bundle(bundle)
        self.cache: EmbeddingCache[ImageEntry] = EmbeddingCache(
            settings.cache_bytes, bundle.fingerprint, metrics
        )
        self.text_cache: LRUCache[np.ndarray] = LRUCache(settings.text_cache_entries)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="samclip-infer")
        self._encoder_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samclip-encoder")
        self.decode_gate = DecodeGate(decode_slots(settings))
        self._decode_pool = ThreadPoolExecutor(self.decode_gate.slots, thread_name_prefix="samclip-decode")
        self._locks = {g: threading.Lock() for g in ("clip_head", "text_encoder", "sam_decoder")}
        self.batcher = Batcher(
            self._encode_batch,
            max_batch_size=settings.max_batch_size,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            queue_size=settings.queue_size,
            executor=self._encoder_pool,
            metrics=metrics,
        )
        self.ready = False

    # --- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.batcher.start()
        if getattr(self.settings, "warmup", True):
            await self._call(self._warmup)
        self.ready = True

    async def stop(self) -> None:
        """Not ready at once; queued encoder work finishes, then the worker threads exit."""
        self.ready = False
        await self.batcher.stop()
        for pool in (
            self._pool,
            self._encoder_pool,
            self._decode_pool,
        ):  # wait for in-flight calls off the event loop
            await asyncio.to_thread(pool.shutdown, True)

    def _warmup(self) -> None:
        """Run all 4 graphs once on dummy inputs (first-call allocations and kernel selection)."""
        s = self.image_size
        start = time.monotonic()
        enc = self.backend.encode(np.zeros((1, 3, s, s), np.float32))
        self.batcher.seed_estimate(time.monotonic() - start)  # first Retry-After estimates
        self.backend.clip_head(enc.patch_tokens)
        self.backend.encode_text(self.tokenizer(["warm-up"]))
        coords = np.array([[[s / 2, s / 2], [0.0, 0.0]]], np.float32)
        labels = np.array([[1.0, -1.0]], np.float32)
        masks = np.zeros((1, 1, self.mask_grid, self.mask_grid), np.float32)
        self.backend.decode(enc.image_embeddings, coords, labels, masks, np.zeros((1,), np.float32))

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _locked(self, graph: str, fn: Callable[..., T], *args: Any) -> T:
        with self._locks[graph]:
            return fn(*args)

    # --- image entries -------------------------------------------------------------------------------------
    def admit(self, image: EncodedImage) -> None:
        """Admission before any decode work: an image not cached and not in flight takes an encoder-queue slot
        (`image.reservation`) or raises QueueFull (429 + Retry-After) now. Cached / in-flight images pass."""
        key = image.sha256
        if image.reservation is None and key not in self.cache and not self.batcher.pending(key):
            image.reservation = self.batcher.reserve()

    async def get_entry(
        self,
        *,
        image: DecodedImage | EncodedImage | None,
        image_id: str | None,
        timings: Timings,
        deadline: float,
    ) -> ImageEntry:
        key = image.sha256 if image is not None else (image_id or "").strip().lower()
        if not key:
            raise InvalidInput("send an image or an image_id")
        entry = self.cache.get(key)
        if entry is not None:
            timings.cache_hit = True
            return dataclasses.replace(entry, cached=True)
        if image is None and not self.batcher.pending(key):
            raise NotFound(f"unknown image_id {key!r} (evicted or never uploaded); send the image again")
        timings.cache_hit = False
        reservation = getattr(image, "reservation", None)
        if isinstance(image, EncodedImage):
            image.reservation = None  # this call owns it now
        try:
            item = None  # the same image already queued or running: coalesce, no decode/preprocess
            if image is not None and not self.batcher.pending(key):
                if reservation is None or not reservation.held:
                    reservation = self.batcher.reserve()  # QueueFull before any decode work
                item = await self._prepare(image, timings, deadline)
                done = self.cache.get(key, count=False)  # finished by a concurrent request meanwhile
                if done is not None:
                    return dataclasses.replace(done, cached=False)
            result = await self.batcher.submit(key, item, deadline, reservation=reservation)
        finally:
            if reservation is not None:
                reservation.release()
        timings.add("queue", result.queued_ms)
        timings.add("encoder", result.run_ms)
        return dataclasses.replace(result.value, cached=False)

    async def _prepare(
        self, image: DecodedImage | EncodedImage, timings: Timings, deadline: float
    ) -> tuple[str, np.ndarray, int, int, tuple[int, int]]:
        """Decode (if still encoded) + preprocess inside one DecodeGate slot -> the batcher item."""
        loop = asyncio.get_running_loop()
        waited = time.perf_counter()
        async with self.decode_gate.slot(deadline):
            timings.add("admission", (time.perf_counter() - waited) * 1000.0)
            if isinstance(image, EncodedImage):
                with timings.measure("decode"):
                    image = await loop.run_in_executor(
                        self._decode_pool, decode_image, image.data, self.settings
                    )
            with timings.measure("preprocess"):
                x, input_size = await loop.run_in_executor(
                    self._decode_pool, preprocess, image.rgb, self.image_size,
                    self.bundle.pixel_mean, self.bundle.pixel_std,
                )  # fmt: skip
        return (image.sha256, x, image.width, image.height, input_size)

    def _encode_batch(
        self, items: list[tuple[str, np.ndarray, int, int, tuple[int, int]]]
    ) -> list[ImageEntry]:
        """Batcher callback (encoder thread): stack, encode, split into cached entries."""
        out = self.backend.encode(np.stack([it[1] for it in items]))
        n_emb, n_tok = len(out.image_embeddings), len(out.patch_tokens)
        if n_emb != len(items) or n_tok != len(items):
            raise InferenceFailed(f"encoder returned {n_emb}/{n_tok} rows for a batch of {len(items)}")
        self.metrics.encoder_runs.inc(len(items))
        entries = []
        for i, (key, _, width, height, input_size) in enumerate(items):
            entry = ImageEntry(
                image_id=key,
                width=width,
                height=height,
                input_size=input_size,
                image_embeddings=np.ascontiguousarray(out.image_embeddings[i : i + 1], np.float32),
                memo=_Memo(patch_tokens=np.ascontiguousarray(out.patch_tokens[i : i + 1], np.float32)),
            )
            self.cache.put(key, entry)
            entries.append(entry)
        return entries

    async def _clip(self, entry: ImageEntry, timings: Timings) -> ClipOutput:
        if entry.memo.clip is None:
            with timings.measure("head"):
                await self._call(self._compute_clip, entry)
        return entry.memo.clip  # type: ignore[return-value]

    def _compute_clip(self, entry: ImageEntry) -> None:
        with entry.memo.lock:
            if entry.memo.clip is None:
                tokens = entry.memo.patch_tokens
                entry.memo.clip = self._locked("clip_head", self.backend.clip_head, tokens)
                entry.memo.patch_tokens = None
                self.cache.refresh_size(entry.image_id)

    # --- text ----------------------------------------------------------------------------------------------
    def _check_texts(self, texts: list[str], limit: int, what: str) -> list[str]:
        cleaned = [t.strip() if isinstance(t, str) else "" for t in texts]
        if not cleaned:
            raise InvalidInput(f"give at least one {what}")
        if len(cleaned) > limit:
            raise InvalidInput(f"{len(cleaned)} {what}s; at most {limit} per request")
        if any(not t for t in cleaned):
            raise InvalidInput(f"every {what} must be a non-empty string")
        return cleaned

    async def _text_embeddings(self, labels: list[str], timings: Timings) -> np.ndarray:
        """labels -> (L, D) float32 template-ensembled embeddings (LRU-cached per label)."""
        missing = list(dict.fromkeys(label for label in labels if self.text_cache.get(label) is None))
        if missing:
            with timings.measure("text"):
                await self._call(self._embed_labels, missing)
        return np.stack([self.text_cache.get(label) for label in labels])  # type: ignore[misc]

    def _embed_labels(self, labels: list[str]) -> None:
        prompts = [p for label in labels for p in expand(label)]
        ids = self.tokenizer(prompts)
        parts = [
            self._locked("text_encoder", self.backend.encode_text, ids[i : i + TEXT_BATCH])
            for i in range(0, len(ids), TEXT_BATCH)
        ]
        emb = np.concatenate(parts).reshape(len(labels), -1, parts[0].shape[-1])
        for label, per_template in zip(labels, emb, strict=True):
            self.text_cache.put(label, ensemble(per_template))

    # --- endpoints -----------------------------------------------------------------------------------------
    async def classify(
        self, entry: ImageEntry, labels: list[str], top_k: int, timings: Timings
    ) -> list[LabelScore]:
        """Zero-shot: softmax over logit_scale * cos(image, label ensemble); best first, top_k of them."""
        labels = self._check_texts(labels, self.settings.max_labels, "label")
        clip = await self._clip(entry, timings)
        text = await self._text_embeddings(labels, timings)
        logits = self.logit_scale * (text @ clip.image_embedding[0].astype(np.float32))
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-logits, kind="stable")[: max(1, int(top_k))]
        return [LabelScore(labels[i], float(probs[i]), float(logits[i])) for i in order]

    def _classes(self, texts: list[str]) -> list[str]:
        """Unique query texts (first occurrence order) followed by the background prompts not among them."""
        unique = list(dict.fromkeys(texts))
        backgrounds = [b.strip() for b in self.settings.background_prompts if b.strip()]
        return unique + [b for b in dict.fromkeys(backgrounds) if b not in unique]

    async def segment_text(self, entry: ImageEntry, texts: list[str], timings: Timings) -> list[MaskResult]:
        """One mask per text (rule in textseg.py), against settings.background_prompts. A repeated text gets
        the same mask as its first occurrence."""
        texts = self._check_texts(texts, self.settings.max_texts, "text")
        classes = self._classes(texts)
        unique = list(dict.fromkeys(texts))
        clip = await self._clip(entry, timings)
        emb = await self._text_embeddings(classes, timings)
        logits = textseg.class_logits(clip.patch_embeddings[0], emb, self.logit_scale)
        with timings.measure("postprocess"):
            results = await self._call(
                textseg.text_segment, logits, unique, entry.input_size, entry.original_size, self.image_size
            )
        by_text = dict(zip(unique, results, strict=True))
        return [dataclasses.replace(by_text[t]) for t in texts]

    async def segment_prompts(
        self, entry: ImageEntry, request: prompt_mod.PromptRequest, timings: Timings
    ) -> list[list[MaskResult]]:
        """SAM masks per prompt (3 if request.multimask else 1), exactly as SamPredictor would give them."""
        specs = request.all_prompts()
        prompt_mod.validate_prompts(specs, entry.width, entry.height, self.settings)
        shared = (
            prompt_mod.decode_mask_input(request.mask_input, self.mask_grid) if request.mask_input else None
        )
        masks = [
            prompt_mod.decode_mask_input(s.mask_input_from, self.mask_grid) if s.mask_input_from else shared
            for s in specs
        ]
        batches = prompt_mod.build_decoder_batches(
            specs, entry.original_size, self.image_size, masks, self.mask_grid
        )
        select = [1, 2, 3] if request.multimask else [0]
        results: list[list[MaskResult]] = [[] for _ in specs]
        for batch in batches:
            with timings.measure("decoder"):
                out = await self._call(
                    self._locked, "sam_decoder", self.backend.decode, entry.image_embeddings,
                    batch.point_coords, batch.point_labels, batch.mask_input, batch.has_mask_input,
                )  # fmt: skip
            with timings.measure("postprocess"):
                for row, i in enumerate(batch.indices):
                    results[i] = await self._call(
                        self._masks, out.low_res_masks[row, select], out.iou_predictions[row, select], entry
                    )
        return results

    def _masks(
        self, low: np.ndarray, iou: np.ndarray, entry: ImageEntry, label: str | None = None
    ) -> list[MaskResult]:
        """low (M, 4h, 4w) logits, iou (M,) -> M MaskResults at original size (logits > 0)."""
        full = postprocess_masks(low, entry.input_size, entry.original_size, self.image_size)
        return [
            MaskResult(mask=full[m] > 0, score=float(iou[m]), iou_prediction=float(iou[m]), label=label,
                       low_res_logits=np.array(low[m], np.float32))
            for m in range(len(low))
        ]  # fmt: skip

    async def refine(
        self, entry: ImageEntry, text: str, num_points: int, seed: int, timings: Timings
    ) -> RefineResult:
        """CLIP-head coarse mask -> importance-sampled points + mask prompt -> SAM decoder (textseg.py)."""
        (text,) = self._check_texts([text], 1, "text")
        if not 1 <= num_points <= self.settings.max_points_per_prompt:
            raise InvalidInput(f"num_points must be in 1..{self.settings.max_points_per_prompt}")
        classes = self._classes([text])
        clip = await self._clip(entry, timings)
        emb = await self._text_embeddings(classes, timings)
        logits = textseg.class_logits(clip.patch_embeddings[0], emb, self.logit_scale)
        valid = textseg.valid_cells(self.mask_grid, entry.input_size, self.image_size)
        conf, wins = textseg.coarse_confidence(logits, self.mask_grid)
        coords, labels = textseg.sample_points(conf, wins, valid, num_points, seed, self.image_size)
        mask_in = textseg.mask_prompt(conf, valid)
        with timings.measure("decoder"):
            out = await self._call(
                self._locked, "sam_decoder", self.backend.decode, entry.image_embeddings,
                np.concatenate([coords, np.zeros((1, 2), np.float32)])[None],
                np.concatenate([labels, [-1.0]]).astype(np.float32)[None],
                mask_in[None], np.ones((1,), np.float32),
            )  # fmt: skip
        best = int(np.argmax(out.iou_predictions[0]))
        with timings.measure("postprocess"):
            (fine,) = await self._call(
                self._masks, out.low_res_masks[0, [best]], out.iou_predictions[0, [best]], entry, text
            )
            (coarse,) = await self._call(
                textseg.text_segment, logits, [text], entry.input_size, entry.original_size, self.image_size
            )
        original = unmap_coords(coords, entry.original_size, self.image_size)
        points = [(float(x), float(y), int(lab)) for (x, y), lab in zip(original, labels, strict=True)]
        return RefineResult(mask=fine, coarse=coarse, points=points)
