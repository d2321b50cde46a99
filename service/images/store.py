"""The image store: admission -> decode gate -> content-hash cache tiers -> batched encoder -> entry.

ONE encoder pass per image. `ImageStore.get(source, timings, deadline)` returns the image's `ImageEntry`:

1. Lookup by image_id (sha256 of the bytes) in the tiers: this process's memory LRU, then the optional shared
   tier (Redis); a shared hit fills the memory tier. A hit never decodes the bytes.
2. An image_id nobody is encoding and no tier holds -> NotFound (404: send the image again).
3. An image already queued or running (another request sent the same bytes) -> wait for that one job.
4. Otherwise take one encoder-queue slot NOW (`Batcher.reserve`: 429 + Retry-After at once when full, before any
   decode), decode + preprocess inside a `DecodeGate` slot, then queue the pixels on that slot. The store is the
   only owner of the slot: one `try/finally` gives it back whatever happens (bad image, deadline, disconnect).

The encoder runs in its own thread through the dynamic `Batcher` (max batch, max wait, bounded queue,
deadlines: a request whose deadline passes while queued gets 504 and its work never runs). Fresh entries go
into the memory tier from the encoder thread and are published to the shared tier before the request that
encoded them is answered (so a follow-up request routed to another replica finds them); an entry that later
gains its CLIP outputs is re-published in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InferenceFailed, NotFound
from service.images.admission import DecodeGate, decode_slots
from service.images.decode import decode_image
from service.images.entry import ImageEntry, new_entry
from service.images.source import ImageSource
from service.images.tiers import EmbeddingTier, MemoryTier
from service.images.transforms import preprocess
from service.runtime.base import EncoderOutput
from service.runtime.batcher import Batcher, BatchResult
from service.timing import Timings

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One image ready for the encoder: pixels (3, S, S) float32 normalised and padded; width, height: the
    ORIGINAL size; input_size: (new_h, new_w) inside the S x S input."""

    key: str
    pixels: np.ndarray
    width: int
    height: int
    input_size: tuple[int, int]


class ImageStore:
    """See the module docstring. `shared` is an optional second `EmbeddingTier` (e.g. Redis)."""

    def __init__(
        self, bundle: Any, backend: Any, settings: Any, metrics: Any, shared: EmbeddingTier | None = None
    ) -> None:
        self.bundle, self.backend, self.settings, self.metrics = bundle, backend, settings, metrics
        self.memory = MemoryTier(settings.effective_cache_bytes(), on_change=metrics.cache_changed)
        self.shared = shared
        self.gate = DecodeGate(decode_slots(settings))
        self._decode_pool = ThreadPoolExecutor(self.gate.slots, thread_name_prefix="samclip-decode")
        self._encoder_pool = ThreadPoolExecutor(1, thread_name_prefix="samclip-encoder")
        self.batcher = Batcher(
            self._encode_batch,
            # a backend that gains nothing from larger encoder batches (OpenVINO: one image per infer request)
            max_batch_size=min(settings.max_batch_size, getattr(backend, "encoder_batch_limit", 1 << 30)),
            max_batch_wait_ms=settings.max_batch_wait_ms,
            queue_size=settings.queue_size,
            executor=self._encoder_pool,
            metrics=metrics,
        )
        self._publishing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.batcher.start()

    async def stop(self) -> None:
        """Queued encoder work finishes, pending shared-tier writes end, then the worker threads exit."""
        await self.batcher.stop()
        if self._publishing:
            await asyncio.wait(set(self._publishing), timeout=5.0)
        if self.shared is not None:
            await self.shared.close()
        for pool in (self._decode_pool, self._encoder_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def warmup(self) -> EncoderOutput:
        """Encode one blank image (first-call allocations) and seed the Retry-After estimate. Blocking."""
        size = self.bundle.image_size
        start = time.monotonic()
        out = self.backend.encode(np.zeros((1, 3, size, size), np.float32))
        self.batcher.seed_estimate(time.monotonic() - start)
        return out

    # --- the one entry point ---------------------------------------------------------------------------------
    async def get(self, source: ImageSource, timings: Timings, deadline: float) -> ImageEntry:
        """The entry for `source` (see the module docstring). Raises NotFound, QueueFull, DeadlineExceeded,
        InvalidImage / UnsupportedMediaType (from decode) or InferenceFailed."""
        key = source.key
        entry = await self._lookup(key)
        timings.cache_hit = entry is not None
        if entry is not None:
            return entry.for_request(cached=True)
        if self.batcher.pending(key):
            return await self._wait(key, None, timings, deadline)
        if source.data is None:
            if (late := self.memory.lookup(key)) is not None:  # encoded while the shared tier answered
                return late.for_request(cached=True)
            raise NotFound(f"unknown image_id {key!r} (evicted or never uploaded); send the image again")
        reservation = self.batcher.reserve()
        try:
            prepared = await self._prepare(source, timings, deadline)
            done = self.memory.lookup(key)  # finished by a concurrent request meanwhile
            if done is not None:
                return done.for_request(cached=False)
            return await self._wait(key, prepared, timings, deadline, reservation)
        finally:
            reservation.release()

    def updated(self, entry: ImageEntry) -> None:
        """An entry grew (memoised CLIP outputs): re-count it and re-publish it. Callable from any thread."""
        self.memory.recount(entry.image_id)
        if self.shared is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._publish, entry)

    # --- steps -----------------------------------------------------------------------------------------------
    async def _lookup(self, key: str) -> ImageEntry | None:
        entry = self.memory.lookup(key)
        self.metrics.embedding_lookup("memory", entry is not None)
        if entry is None and self.shared is not None:
            entry = await self.shared.get(key)
            self.metrics.embedding_lookup(self.shared.name, entry is not None)
            if entry is not None:
                self.memory.store(key, entry)
        self.metrics.cache_lookup(entry is not None)
        return entry

    async def _prepare(self, source: ImageSource, timings: Timings, deadline: float) -> Prepared:
        """Decode + preprocess inside one DecodeGate slot (off the event loop)."""
        waited = time.perf_counter()
        async with self.gate.slot(deadline):
            timings.add("admission", (time.perf_counter() - waited) * 1000.0)
            loop = asyncio.get_running_loop()
            prepared, stages = await loop.run_in_executor(self._decode_pool, self._decode, source)
        for stage, ms in stages.items():
            timings.add(stage, ms)
        return prepared

    def _decode(self, source: ImageSource) -> tuple[Prepared, dict[str, float]]:
        start = time.perf_counter()
        image = decode_image(source.data or b"", self.settings)
        decoded = time.perf_counter()
        bundle = self.bundle
        pixels, input_size = preprocess(image.rgb, bundle.image_size, bundle.pixel_mean, bundle.pixel_std)
        done = time.perf_counter()
        stages = {"decode": (decoded - start) * 1000.0, "preprocess": (done - decoded) * 1000.0}
        return Prepared(source.key, pixels, image.width, image.height, input_size), stages

    async def _wait(
        self,
        key: str,
        prepared: Prepared | None,
        timings: Timings,
        deadline: float,
        reservation: Any = None,
    ) -> ImageEntry:
        result: BatchResult = await self.batcher.submit(key, prepared, deadline, reservation=reservation)
        timings.add("queue", result.queued_ms)
        timings.add("encoder", result.run_ms)
        self.metrics.observe_queue(result.queued_ms / 1000.0)
        entry: ImageEntry = result.value
        if not result.coalesced and self.shared is not None:
            with timings.measure("publish"):  # before answering: the next request may reach another replica
                await self.shared.put(key, entry)
        return entry.for_request(cached=False)

    def _encode_batch(self, items: list[Prepared]) -> list[ImageEntry]:
        """Batcher callback (encoder thread): stack, encode, split into entries, store them in memory."""
        out = self.backend.encode(np.stack([it.pixels for it in items]))
        rows = (len(out.image_embeddings), len(out.patch_tokens))
        if rows != (len(items), len(items)):
            raise InferenceFailed(f"encoder returned {rows[0]}/{rows[1]} rows for a batch of {len(items)}")
        self.metrics.encoder_runs.inc(len(items))
        entries = []
        for i, item in enumerate(items):
            entry = new_entry(
                item.key,
                (item.width, item.height),
                item.input_size,
                out.image_embeddings[i : i + 1],
                out.patch_tokens[i : i + 1],
                getattr(self.settings, "cache_dtype", "float32"),
            )
            self.memory.store(item.key, entry)
            entries.append(entry)
        return entries

    def _publish(self, entry: ImageEntry) -> None:
        """Write the entry to the shared tier in the background (event loop thread)."""
        if self.shared is None:
            return
        task = asyncio.ensure_future(self.shared.put(entry.image_id, entry))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
