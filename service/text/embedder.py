"""The text embedder: label -> (D,) float32 template-ensembled CLIP text embedding, cached and batched.

A label's embedding is the mean of its 80 template embeddings (templates.py), L2-normalised. Computing one is
80 rows through the text tower (a ViT-L/14 text transformer: seconds on a CPU), so:

- embeddings live in an LRU keyed by the label (`text_cache_entries`; 0 disables it, the request still works);
- labels not cached yet ("new") are capped per request (`max_new_texts`: more -> 422 at once, nothing runs);
- new labels go through their own dynamic batcher (`TEXT_BATCH_LABELS` labels per text-tower call), so
  concurrent requests share calls and the same label is computed once;
- a request submits its new labels in chunks of `TEXT_BATCH_LABELS` and checks its deadline between chunks, so
  one request with many new labels gets 504 at its deadline instead of holding the text tower, and other
  requests' labels are interleaved with its chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np
from cachetools import LRUCache

from service.errors import DeadlineExceeded, InferenceFailed, InvalidInput
from service.runtime.batcher import Batcher
from service.text.templates import ensemble, expand
from service.text.tokenizer import ClipTokenizer
from service.timing import Timings

TEXT_BATCH_LABELS = 4
"""Labels per text-tower call (x 80 templates = 320 rows)."""


class TextEmbedder:
    """See the module docstring. `executor` runs the blocking text-tower calls."""

    def __init__(self, backend: Any, tokenizer: ClipTokenizer, settings: Any, executor: Executor) -> None:
        self.backend, self.tokenizer, self.settings = backend, tokenizer, settings
        self._cache: LRUCache[str, np.ndarray] | None = (
            LRUCache(maxsize=settings.text_cache_entries) if settings.text_cache_entries > 0 else None
        )
        self._lock = threading.Lock()
        self.batcher = Batcher(
            self._embed_batch,
            max_batch_size=TEXT_BATCH_LABELS,
            max_batch_wait_ms=2.0,
            queue_size=max(settings.queue_size, settings.max_new_texts),
            executor=executor,
            name="text encoder",
        )

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    def cached(self, label: str) -> np.ndarray | None:
        if self._cache is None:
            return None
        with self._lock:
            return self._cache.get(label)

    async def embed(self, labels: list[str], timings: Timings, deadline: float) -> np.ndarray:
        """labels -> (L, D) float32 (one row per label, in order; repeats allowed)."""
        found: dict[str, np.ndarray] = {}
        for label in labels:
            if label not in found and (emb := self.cached(label)) is not None:
                found[label] = emb
        new = [label for label in dict.fromkeys(labels) if label not in found]
        if len(new) > self.settings.max_new_texts:
            raise InvalidInput(
                f"{len(new)} of the texts are not cached yet; at most {self.settings.max_new_texts} new texts "
                "per request (SAMCLIP_MAX_NEW_TEXTS): send them in smaller requests first",
                error_type="too_many_new_texts",
            )
        if new:
            with timings.measure("text"):
                for start in range(0, len(new), TEXT_BATCH_LABELS):
                    if time.monotonic() >= deadline:
                        raise DeadlineExceeded("request deadline passed while embedding new texts")
                    chunk = new[start : start + TEXT_BATCH_LABELS]
                    results = await asyncio.gather(*(self.batcher.submit(t, t, deadline) for t in chunk))
                    found.update(zip(chunk, (r.value for r in results), strict=True))
        return np.stack([found[label] for label in labels]).astype(np.float32, copy=False)

    def warmup(self) -> None:
        """One text-tower call (first-call allocations). Blocking."""
        self.backend.encode_text(self.tokenizer(["warm-up"]))

    def _embed_batch(self, labels: list[str]) -> list[np.ndarray]:
        """Batcher callback (worker thread): all templates of `labels` in one text-tower call."""
        per_label = [expand(label) for label in labels]
        ids = self.tokenizer([p for prompts in per_label for p in prompts])
        emb = self.backend.encode_text(ids)
        if len(emb) != len(ids):
            raise InferenceFailed(f"text encoder returned {len(emb)} rows for {len(ids)} prompts")
        out, row = [], 0
        for label, prompts in zip(labels, per_label, strict=True):
            vector = ensemble(emb[row : row + len(prompts)])
            row += len(prompts)
            out.append(vector)
            if self._cache is not None:
                with self._lock, contextlib.suppress(ValueError):
                    self._cache[label] = vector
        return out
