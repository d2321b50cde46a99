"""Shared by the inference routers: load the request's image, render masks (JSON or one PNG) off the loop."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service import render
from service.engine import Engine
from service.images.entry import ImageEntry
from service.routes.deps import RequestContext
from service.routes.requests import ImageRequest
from service.tasks.results import MaskResult


async def load(engine: Engine, req: ImageRequest, ctx: RequestContext) -> ImageEntry:
    """The request's image entry (cached, or decoded and encoded once): see service/images/store.py."""
    return await engine.images.get(req.source, ctx.timings, ctx.deadline)


async def png_response(
    results: list[MaskResult], req: Any, entry: ImageEntry, ctx: RequestContext
) -> Response:
    """ONE mask of `results` (`req.index`) as image/png, described by X-Mask-* headers."""
    with ctx.timings.measure("render"):
        data, headers = await run_in_threadpool(render.png, results, req.index, entry)
    return Response(data, media_type="image/png", headers=headers)


async def masks_json(results: list[MaskResult], req: Any, ctx: RequestContext) -> list[dict[str, Any]]:
    """MaskResults -> JSON dicts in `req.output` format (rle | polygon), with low-res logits if asked."""
    logits = bool(getattr(req, "return_logits", False))
    with ctx.timings.measure("render"):
        return await run_in_threadpool(render.masks_to_json, results, req.output, logits)
