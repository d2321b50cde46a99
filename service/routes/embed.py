"""POST /embed: encode an image once (or find it in a cache tier) and return its image_id."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.routes.deps import ContextDep, EngineDep
from service.routes.inputs import filled
from service.routes.openapi import inference_router, post
from service.routes.output import load
from service.routes.requests import ImageRequest, RequestModels
from service.routes.responses import EmbedResponse, image_meta


def build(models: RequestModels) -> APIRouter:
    router = inference_router()
    fill_embed = Depends(filled(models.embed))

    @post(
        router,
        "/embed",
        models.embed,
        EmbedResponse,
        "Encode an image (one encoder pass) and cache its embedding",
        "Send the image as a raw body (`Content-Type: image/jpeg`) or multipart field `image`. "
        "Later calls on any endpoint can pass the returned `image_id` (the sha256 of the bytes) instead.",
    )
    async def embed(engine: EngineDep, ctx: ContextDep, req: ImageRequest = fill_embed) -> EmbedResponse:
        return EmbedResponse(**image_meta(await load(engine, req, ctx)))

    return router
