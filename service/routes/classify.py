"""POST /classify: zero-shot classification of an image against the given labels (CLIP head + text tower,
prompt-template ensemble done by the predictor). Probabilities are a softmax over the given labels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.deps import (
    DeadlineDep,
    ImageInputDep,
    PredictorDep,
    SettingsDep,
    TimingsDep,
    check_texts,
    load_entry,
    require_api_key,
)
from service.errors import InvalidInput
from service.routes.embed import ERRORS
from service.routes.render import body_doc, image_meta
from service.schemas import ClassifyRequest, ClassifyResponse, LabelScoreOut

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])

LABELS_FIELD = {"labels": {"type": "array", "items": {"type": "string"}, "description": "Repeat per label."}}


def _top_k(raw: object, n_labels: int) -> int:
    if raw is None:
        return n_labels
    try:
        k = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InvalidInput("top_k must be an integer") from None
    if k < 1:
        raise InvalidInput("top_k must be >= 1")
    return min(k, n_labels)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Zero-shot classify an image against labels",
    description="Labels as repeated `labels` query/form fields (`-F labels=dog -F labels=cat`) or a JSON body "
    '`{"labels": ["dog", "cat"], "image_id": "..."}`. Returns labels ranked by probability.',
    responses=ERRORS,
    openapi_extra=body_doc(LABELS_FIELD | {"top_k": {"type": "integer"}}, ClassifyRequest),
)
async def classify(
    predictor: PredictorDep,
    inp: ImageInputDep,
    settings: SettingsDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    labels: Annotated[list[str], Query(description="Candidate labels (repeat the parameter).")] = [],  # noqa: B006
    top_k: Annotated[int | None, Query(ge=1, description="Return only the best k labels.")] = None,
) -> ClassifyResponse:
    names = check_texts(inp.values("labels", labels), "labels", settings.max_labels, settings.max_text_chars)
    k = _top_k(inp.value("top_k", top_k), len(names))
    entry = await load_entry(predictor, inp, timings, deadline)
    scores = await predictor.classify(entry, names, k, timings)
    ranked = sorted(scores, key=lambda s: s.probability, reverse=True)[:k]
    out = [
        LabelScoreOut(label=s.label, probability=float(s.probability), logit=float(s.logit)) for s in ranked
    ]
    return ClassifyResponse(**image_meta(entry), labels=out)
