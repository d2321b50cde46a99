"""The engine: everything loaded for one bundle, in the order a request uses it.

    image store (admission, decode gate, cache tiers, batched encoder)  -> ImageEntry
    text embedder (templates, tokenizer, text cache, batching, caps)    -> label embeddings
    heads (CLIP head memoised per entry, SAM decoder, mask upsampling)  -> used by the tasks
    task pool: the tasks (service/tasks) are plain blocking functions over an entry; `run` calls one off the
    event loop.

`start()` starts the batchers and warms every graph up before the app reports ready; `stop()` lets queued work
finish, then stops the threads; the backend is closed by the app after that.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from service.errors import InferenceFailed, ServiceError
from service.images.store import ImageStore
from service.images.tiers import EmbeddingTier
from service.tasks.heads import Heads
from service.text.embedder import TextEmbedder
from service.text.tokenizer import ClipTokenizer
from service.timing import Timings

T = TypeVar("T")
log = logging.getLogger(__name__)
TASK_THREADS = 4


class Engine:
    """bundle: service.bundle.Bundle; backend: a service.runtime Backend; shared: optional shared cache tier."""

    def __init__(
        self, bundle: Any, backend: Any, settings: Any, metrics: Any, shared: EmbeddingTier | None = None
    ) -> None:
        self.bundle, self.backend, self.settings, self.metrics = bundle, backend, settings, metrics
        self._tasks = ThreadPoolExecutor(TASK_THREADS, thread_name_prefix="samclip-task")
        self._text_pool = ThreadPoolExecutor(1, thread_name_prefix="samclip-text")
        self.images = ImageStore(bundle, backend, settings, metrics, shared)
        self.text = TextEmbedder(backend, ClipTokenizer.from_bundle(bundle), settings, self._text_pool)
        self.heads = Heads(bundle, backend, self.images.updated)
        self.ready = False

    async def start(self) -> None:
        await self.images.start()
        await self.text.start()
        if self.settings.warmup:
            await asyncio.to_thread(self._warmup)
        self.ready = True

    async def stop(self) -> None:
        """Not ready at once; queued work finishes, then the worker threads exit."""
        self.ready = False
        await self.images.stop()
        await self.text.stop()
        for pool in (self._tasks, self._text_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking task function in the task pool. A failure that is not a ServiceError (a backend
        error) fails this request only: InferenceFailed (500), logged; the engine keeps serving."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._tasks, functools.partial(fn, *args))
        except ServiceError:
            raise
        except Exception as exc:
            log.exception("task %s failed", getattr(fn, "__name__", fn))
            raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc

    async def text_embeddings(self, texts: list[str], timings: Timings, deadline: float) -> np.ndarray:
        """(len(texts), D) float32 label embeddings (see TextEmbedder)."""
        return await self.text.embed(texts, timings, deadline)

    def _warmup(self) -> None:
        """Run all 4 graphs once on dummy inputs (first-call allocations and kernel selection)."""
        enc = self.images.warmup()
        self.backend.clip_head(enc.patch_tokens)
        self.text.warmup()
        size, grid = self.bundle.image_size, 4 * self.bundle.embed_grid
        coords = np.array([[[size / 2, size / 2], [0.0, 0.0]]], np.float32)
        labels = np.array([[1.0, -1.0]], np.float32)
        masks = np.zeros((1, 1, grid, grid), np.float32)
        self.backend.decode(enc.image_embeddings, coords, labels, masks, np.zeros((1,), np.float32))
