"""POST /classify?labels=a&labels=b: zero-shot classification (CLIP head + text tower, 80-template ensembles).
Probabilities are a softmax over the given labels."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.routes.deps import ContextDep, EngineDep
from service.routes.inputs import filled
from service.routes.openapi import inference_router, post
from service.routes.output import load
from service.routes.requests import RequestModels
from service.routes.responses import ClassifyResponse, LabelScoreOut, image_meta
from service.tasks.classify import classify as classify_task


def build(models: RequestModels) -> APIRouter:
    router = inference_router()
    fill_classify = Depends(filled(models.classify))

    @post(
        router,
        "/classify",
        models.classify,
        ClassifyResponse,
        "Zero-shot classify an image against labels",
        "`curl -F image=@x.jpg 'http://127.0.0.1:8000/classify?labels=dog&labels=cat&top_k=1'`. "
        "Returns labels ranked by probability (softmax over all given labels).",
    )
    async def classify(engine: EngineDep, ctx: ContextDep, req: Any = fill_classify) -> ClassifyResponse:
        entry = await load(engine, req, ctx)
        text = await engine.text_embeddings(req.labels, ctx.timings, ctx.deadline)
        k = req.top_k or len(req.labels)
        scores = await engine.run(classify_task, engine.heads, entry, text, req.labels, k, ctx.timings)
        labels = [LabelScoreOut(label=s.label, probability=s.probability, logit=s.logit) for s in scores]
        return ClassifyResponse(**image_meta(entry), labels=labels)

    return router
