"""POST /segment/prompt: SAM point / box / mask prompts on the cached embedding (JSON body with `image_id`, or
multipart `image` + `prompts`); `multimask` gives 3 masks per prompt, with SAM's predicted IoU
(service/tasks/prompt.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.routes.deps import ContextDep, EngineDep
from service.routes.inputs import filled
from service.routes.openapi import inference_router, post
from service.routes.output import load, masks_json, png_response
from service.routes.requests import RequestModels
from service.routes.responses import PromptSegmentResponse, image_meta
from service.tasks.prompt import segment_prompts


def build(models: RequestModels) -> APIRouter:
    router = inference_router("/segment")
    fill = Depends(filled(models.prompt))

    @post(
        router,
        "/prompt",
        models.prompt,
        PromptSegmentResponse,
        "Point / box / mask prompted segmentation (SAM decoder)",
        'JSON: `{"image_id": "...", "prompts": [{"points": [{"x": 100, "y": 80, "label": 1}]}], '
        '"boxes": [[x0, y0, x1, y1]], "multimask": true}`; multipart: `-F image=@x.jpg -F '
        "'prompts=[{\"box\": [10, 20, 200, 180]}]'`. Coordinates in original-image pixels. PNG: prompt-major order.",
        png=True,
    )
    async def segment_by_prompt(engine: EngineDep, ctx: ContextDep, req: Any = fill) -> Any:
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

    return router
