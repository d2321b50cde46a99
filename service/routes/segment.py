"""POST /segment?text=dog[&text=cat]: text-segment from the CLIP head, one mask per text (a pixel belongs to
text i when it scores highest among all texts AND the background prompts: service/tasks/textseg.py); with
instances=true, one SAM mask per connected part of each text's mask, all boxes in one decoder call
(service/tasks/instances.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.routes.deps import ContextDep, EngineDep, SettingsDep
from service.routes.inputs import filled
from service.routes.openapi import inference_router, post
from service.routes.output import load, masks_json, png_response
from service.routes.requests import RequestModels
from service.routes.responses import SegmentResponse, image_meta
from service.tasks.instances import segment_instances
from service.tasks.textseg import segment_text


def build(models: RequestModels) -> APIRouter:
    router = inference_router("/segment")
    fill = Depends(filled(models.segment))

    @post(
        router,
        "",
        models.segment,
        SegmentResponse,
        "Text-prompted segmentation (CLIP head), one mask per text",
        "`curl -F image=@dog.jpg 'http://127.0.0.1:8000/segment?text=dog&text=cat'`. A pixel belongs "
        "to a text when that text scores highest among all texts and the background prompts.",
        png=True,
    )
    async def segment_by_text(
        engine: EngineDep, ctx: ContextDep, settings: SettingsDep, req: Any = fill
    ) -> Any:
        entry = await load(engine, req, ctx)
        classes = await engine.text_embeddings(
            [*req.text, *settings.background_prompts], ctx.timings, ctx.deadline
        )
        if req.instances:
            results = await engine.run(
                segment_instances, engine.heads, entry, classes, req.text, req.min_area, req.max_instances,
                ctx.timings,
            )  # fmt: skip
        else:
            results = await engine.run(segment_text, engine.heads, entry, classes, req.text, ctx.timings)
        if req.output == "png":
            return await png_response(results, req, entry, ctx)
        masks = await masks_json(results, req, ctx)
        if req.instances:
            masks = [
                {**m, "instance": r.instance, "text_score": r.text_score}
                for m, r in zip(masks, results, strict=True)
            ]
        return SegmentResponse(
            **image_meta(entry), masks=masks, background_prompts=settings.background_prompts
        )

    return router
