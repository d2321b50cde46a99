"""Segmentation endpoints, all on the one cached image embedding:

- POST /segment?text=dog[&text=cat]: text-segment from the CLIP head, one mask per text. A pixel belongs to
  text i when text i has the highest similarity among all texts AND the `background_prompts` (default
  "background"); otherwise it is background (service/tasks/textseg.py).
- POST /segment/prompt: SAM point/box/mask prompts (JSON body with `image_id`, or multipart `image` + `prompts`);
  `multimask` gives 3 masks per prompt; masks carry SAM's predicted IoU (service/tasks/prompt.py).
- POST /segment/refine?text=dog: CLIP-head coarse mask -> sampled point prompts + mask prompt -> SAM decoder
  (service/tasks/refine.py).
- POST /segment?text=dog&instances=true: one SAM mask per connected part of the text mask, all boxes in one
  decoder call (service/tasks/instances.py).
- POST /segment/everything[?labels=...]: SAM's automatic mask generation on the cached embedding, optionally
  labelled from the CLIP head's dense features (service/tasks/everything.py, labels.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.routes.deps import ContextDep, EngineDep, SettingsDep, require_api_key
from service.routes.inputs import filled
from service.routes.openapi import ERRORS, PNG_200, operation_doc
from service.routes.output import load, masks_json, png_response
from service.routes.requests import RequestModels
from service.routes.responses import (
    EverythingResponse,
    PromptSegmentResponse,
    RefineResponse,
    SegmentResponse,
    image_meta,
)
from service.tasks.everything import EverythingParams, segment_everything
from service.tasks.instances import segment_instances
from service.tasks.prompt import segment_prompts
from service.tasks.refine import refine
from service.tasks.textseg import segment_text

RESPONSES = {**ERRORS, 200: {"content": PNG_200, "description": "Masks as JSON, or ONE mask as PNG"}}


def build(models: RequestModels) -> APIRouter:
    router = APIRouter(prefix="/segment", tags=["inference"], dependencies=[Depends(require_api_key)])
    fill_segment = Depends(filled(models.segment))
    fill_prompt = Depends(filled(models.prompt))
    fill_refine = Depends(filled(models.refine))
    fill_everything = Depends(filled(models.everything))

    @router.post(
        "",
        response_model=SegmentResponse,
        summary="Text-prompted segmentation (CLIP head), one mask per text",
        description="`curl -F image=@dog.jpg 'http://127.0.0.1:8000/segment?text=dog&text=cat'`. A pixel belongs "
        "to a text when that text scores highest among all texts and the background prompts.",
        responses=RESPONSES,
        openapi_extra=operation_doc(models.segment),
    )
    async def segment_by_text(
        engine: EngineDep, ctx: ContextDep, settings: SettingsDep, req: Any = fill_segment
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

    @router.post(
        "/prompt",
        response_model=PromptSegmentResponse,
        summary="Point / box / mask prompted segmentation (SAM decoder)",
        description='JSON: `{"image_id": "...", "prompts": [{"points": [{"x": 100, "y": 80, "label": 1}]}], '
        '"boxes": [[x0, y0, x1, y1]], "multimask": true}`; multipart: `-F image=@x.jpg -F '
        "'prompts=[{\"box\": [10, 20, 200, 180]}]'`. Coordinates in original-image pixels. PNG: prompt-major order.",
        responses=RESPONSES,
        openapi_extra=operation_doc(models.prompt),
    )
    async def segment_by_prompt(engine: EngineDep, ctx: ContextDep, req: Any = fill_prompt) -> Any:
        entry = await load(engine, req, ctx)
        groups = await engine.run(
            segment_prompts, engine.heads, entry, req.all_prompts(), req.multimask, ctx.timings
        )
        flat = [m for group in groups for m in group]
        if req.output == "png":
            return await png_response(flat, req, entry, ctx)
        rendered = await masks_json(flat, req, ctx)
        prompts, start = [], 0
        for group in groups:
            prompts.append({"masks": rendered[start : start + len(group)]})
            start += len(group)
        return PromptSegmentResponse(**image_meta(entry), prompts=prompts)

    @router.post(
        "/refine",
        response_model=RefineResponse,
        summary="CLIP→SAM refine: text coarse mask -> sampled points + mask prompt -> SAM decoder",
        description="`curl -F image=@x.jpg 'http://127.0.0.1:8000/segment/refine?text=dog&return_coarse=true'`. "
        "PNG: index 0 is the fine mask, index 1 the coarse mask (when return_coarse).",
        responses=RESPONSES,
        openapi_extra=operation_doc(models.refine),
    )
    async def segment_refine(
        engine: EngineDep, ctx: ContextDep, settings: SettingsDep, req: Any = fill_refine
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

    @router.post(
        "/everything",
        response_model=EverythingResponse,
        summary="Segment everything: SAM automatic masks (point grid), optionally labelled by the CLIP head",
        description="`curl -F image=@x.jpg 'http://127.0.0.1:8000/segment/everything?labels=dog&labels=cat'`."
        " One encoder pass; grid points go through the SAM decoder in batches; predicted-IoU and stability "
        "filters, box NMS. With labels, each mask's label comes from the CLIP patch embeddings pooled in it.",
        responses=RESPONSES,
        openapi_extra=operation_doc(models.everything),
    )
    async def segment_all(
        engine: EngineDep, ctx: ContextDep, settings: SettingsDep, req: Any = fill_everything
    ) -> Any:
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
