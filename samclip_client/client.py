"""`Client` (sync) and `AsyncClient` (asyncio): the same methods, the same requests (calls.py, exchange.py).

    from samclip_client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as client:
        result = client.segment("photo.jpg", text=["dog", "cat"])
        result.masks[0].mask        # (H, W) bool numpy array

`AsyncClient` methods are coroutines: `await client.segment(...)`. Images may be paths, bytes, PIL images,
numpy arrays (H, W[, C]) uint8, or `client.image(x)` (bytes read and hashed once, reused across calls).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from samclip_client import calls
from samclip_client.calls import Box, Call, Point
from samclip_client.exchange import KnownImages, Send, Sleep, exchange
from samclip_client.images import ImageData, as_image
from samclip_client.results import Mask
from samclip_client.retry import Retry

DEFAULT_TIMEOUT_S = 120.0
"""Per-request timeout: above the server's default request deadline (60 s) so its 504 arrives first."""


class _Methods:
    """Every endpoint as a method; `_run(call, image)` sends it (sync: the result; async: a coroutine)."""

    def __init__(self, url: str, api_key: str | None, retry: Retry | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or Retry()
        self.known = KnownImages()
        self._http_kwargs: dict[str, Any] = {
            "base_url": self.url,
            "timeout": timeout,
            "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
            "transport_retries": 2,  # connection failures (nothing sent yet)
        }

    def _run(self, call: Call, image: Any = None) -> Any:
        raise NotImplementedError

    @staticmethod
    def image(image: Any) -> ImageData:
        """Read / encode `image` once and hash it: pass the result to many calls."""
        return as_image(image)

    def embed(self, image: Any) -> Any:
        """Encode the image (or find it cached) -> EmbedResult (image_id, width, height, cached)."""
        return self._run(calls.embed(), image)

    def classify(self, image: Any, labels: Sequence[str], top_k: int | None = None) -> Any:
        """Zero-shot classify against `labels` -> ClassifyResult (labels ranked by softmax probability)."""
        return self._run(calls.classify(labels, top_k), image)

    def segment(self, image: Any, text: str | Sequence[str]) -> Any:
        """One mask per text (CLIP head) -> MasksResult; mask score = text probability."""
        return self._run(calls.segment(text), image)

    def instances(
        self,
        image: Any,
        text: str | Sequence[str],
        min_area: int | None = None,
        max_instances: int | None = None,
    ) -> Any:
        """One mask per object instance of each text -> MasksResult (label, instance, text_score; score =
        SAM predicted IoU), ordered by text then score."""
        return self._run(calls.instances(text, min_area, max_instances), image)

    def prompt(
        self,
        image: Any,
        points: Sequence[Point] | None = None,
        boxes: Sequence[Box] | None = None,
        *,
        box: Box | None = None,
        prompts: Sequence[dict[str, Any]] | None = None,
        multimask: bool = False,
        mask_input: Mask | np.ndarray | str | None = None,
        return_logits: bool = False,
    ) -> Any:
        """SAM prompts -> PromptResult. `points` [(x, y[, label])] (+ `box` (x0, y0, x1, y1)) are ONE object;
        each of `boxes` is one more object. mask_input: a Mask from return_logits=True, or (4h, 4w) logits."""
        return self._run(
            calls.prompt(points, box, boxes, prompts, multimask, mask_input, return_logits), image
        )

    def refine(
        self,
        image: Any,
        text: str,
        num_points: int | None = None,
        seed: int | None = None,
        return_coarse: bool = False,
        return_points: bool = False,
    ) -> Any:
        """CLIP coarse mask -> sampled points + mask prompt -> SAM -> RefineResult (mask, coarse, points)."""
        options = {"num_points": num_points, "seed": seed}
        options |= {"return_coarse": return_coarse or None, "return_points": return_points or None}
        return self._run(calls.refine(text, **options), image)

    def everything(
        self,
        image: Any,
        labels: Sequence[str] | None = None,
        points_per_side: int | None = None,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        box_nms_thresh: float | None = None,
        max_masks: int | None = None,
    ) -> Any:
        """SAM automatic masks (point grid, IoU/stability filters, box NMS) -> MasksResult ordered by
        predicted IoU; with `labels`, each mask also gets `label` and `label_score`. None = server default."""
        options = {"points_per_side": points_per_side, "pred_iou_thresh": pred_iou_thresh,
                   "stability_score_thresh": stability_score_thresh, "box_nms_thresh": box_nms_thresh,
                   "max_masks": max_masks}  # fmt: skip
        return self._run(calls.everything(labels, **options), image)

    def info(self) -> Any:
        """GET /info as a dict (model, backend, settings...)."""
        return self._run(calls.get("/info"))


def _start(call: Call, image: Any, client: _Methods) -> Any:
    return exchange(call, None if image is None else as_image(image), client.known, client.retry)


def _transport(kwargs: dict[str, Any], cls: type, **transport: Any) -> dict[str, Any]:
    """httpx client kwargs with a transport of class `cls` that retries connection failures."""
    out = dict(kwargs)
    out["transport"] = cls(retries=out.pop("transport_retries"), **transport)
    return out


class Client(_Methods):
    """Synchronous client (thread-safe: one connection pool shared by threads). Close it, or use `with`."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        retry: Retry | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(url, api_key, retry, timeout)
        self._http = httpx.Client(**_transport(self._http_kwargs, httpx.HTTPTransport))

    def _run(self, call: Call, image: Any = None) -> Any:
        steps = _start(call, image, self)
        answer: httpx.Response | None = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                return done.value
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                answer = None
            else:
                assert isinstance(step, Send)
                answer = self._http.request(**step.request)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Methods):
    """asyncio client: every method is a coroutine. Close it (`await client.aclose()`) or use `async with`."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        retry: Retry | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_connections: int = 100,
    ) -> None:
        super().__init__(url, api_key, retry, timeout)
        limits = httpx.Limits(max_connections=max_connections)
        self._http = httpx.AsyncClient(
            **_transport(self._http_kwargs, httpx.AsyncHTTPTransport, limits=limits)
        )

    async def _run(self, call: Call, image: Any = None) -> Any:
        steps = _start(call, image, self)
        answer: httpx.Response | None = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                return done.value
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                answer = None
            else:
                assert isinstance(step, Send)
                answer = await self._http.request(**step.request)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
