"""POST /segment/refine?text=dog: the CLIP head's coarse text mask -> sampled point prompts + mask prompt -> SAM
decoder (seed paper A.3; service/tasks/refine.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.routes.deps import ContextDep, EngineDep, SettingsDep
from service.routes.inputs import filled
from service.routes.openapi import inference_router, post
from service.routes.output import load, masks_json, png_response
from service.routes.requests import RequestModels
from service.routes.responses import RefineResponse, image_meta
from service.tasks.refine import refine


def build(models: RequestModels) -> APIRouter:
    router = inference_router("/segment")
    fill = Depends(filled(models.refine))

    @post(
        router,
        "/refine",
        models.refine,
        RefineResponse,
        "CLIP→SAM refine: text coarse mask -> sampled points + mask prompt -> SAM decoder",
        "`curl -F image=@x.jpg 'http://127.0.0.1:8000/segment/refine?text=dog&return_coarse=true'`. "
        "PNG: index 0 is the fine mask, index 1 the coarse mask (when return_coarse).",
        png=True,
    )
    async def segment_refine(
        engine: EngineDep, ctx: ContextDep, settings: SettingsDep, req: Any = fill
    ) -> Any:
        entry = await load(engine, req, ctx)
        classes = await engine.text_embeddings(
            [req.text, *settings.background_prompts], ctx.timings, ctx.deadline
        )
        result = await engine.run(
            refine, engine.heads, entry, classes, req.text, req.num_points, req.seed, ctx.timings
        )
        results = [result.mask] + ([result.coarse] if req.return_coarse else [])
        if req.output == "png":
            return await png_response(results, req, entry, ctx)
        rendered = await masks_json(results, req, ctx)
        points = (
            [{"x": x, "y": y, "label": lab} for x, y, lab in result.points] if req.return_points else None
        )
        coarse = rendered[1] if req.return_coarse else None
        return RefineResponse(**image_meta(entry), mask=rendered[0], coarse=coarse, points=points)

    return router
