"""POST /segment/everything[?labels=...]: SAM's automatic mask generation on the cached embedding, optionally
labelled from the CLIP head's dense features pooled in each mask (service/tasks/everything.py, labels.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.routes.deps import ContextDep, EngineDep, SettingsDep
from service.routes.inputs import filled
from service.routes.openapi import inference_router, post
from service.routes.output import load, masks_json, png_response
from service.routes.requests import RequestModels
from service.routes.responses import EverythingResponse, image_meta
from service.tasks.everything import EverythingParams, segment_everything


def build(models: RequestModels) -> APIRouter:
    router = inference_router("/segment")
    fill = Depends(filled(models.everything))

    @post(
        router,
        "/everything",
        models.everything,
        EverythingResponse,
        "Segment everything: SAM automatic masks (point grid), optionally labelled by the CLIP head",
        "`curl -F image=@x.jpg 'http://127.0.0.1:8000/segment/everything?labels=dog&labels=cat'`."
        " One encoder pass; grid points go through the SAM decoder in batches; predicted-IoU and stability "
        "filters, box NMS. With labels, each mask's label comes from the CLIP patch embeddings pooled in it.",
        png=True,
    )
    async def segment_all(engine: EngineDep, ctx: ContextDep, settings: SettingsDep, req: Any = fill) -> Any:
        entry = await load(engine, req, ctx)
        labels = await engine.text_embeddings(req.labels, ctx.timings, ctx.deadline) if req.labels else None
        params = EverythingParams(
            points_per_side=req.points_per_side, points_per_batch=settings.points_per_batch,
            pred_iou_thresh=req.pred_iou_thresh, stability_score_thresh=req.stability_score_thresh,
            box_nms_thresh=req.box_nms_thresh, max_masks=req.max_masks,
        )  # fmt: skip
        results = await engine.run(
            segment_everything, engine.heads, entry, params, labels, req.labels, ctx.timings, ctx.deadline
        )
        if req.output == "png":
            return await png_response(results, req, entry, ctx)
        rendered = await masks_json(results, req, ctx)
        masks = [
            {**m, "stability_score": r.stability_score, "point": list(r.point), "label_score": r.label_score}
            for m, r in zip(rendered, results, strict=True)
        ]
        return EverythingResponse(**image_meta(entry), masks=masks, labels=req.labels)

    return router
