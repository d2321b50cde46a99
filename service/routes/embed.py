"""POST /embed: encode an image once (or find it in the cache) and return its image_id."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.deps import DeadlineDep, ImageInputDep, PredictorDep, TimingsDep, load_entry, require_api_key
from service.routes.render import PNG_RESPONSE_DOC, body_doc, image_meta
from service.schemas import EmbedResponse, ErrorResponse

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])
ERRORS = {code: {"model": ErrorResponse, **doc} for code, doc in PNG_RESPONSE_DOC.items() if code != 200}


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Encode an image (one encoder pass) and cache its embedding",
    description="Send the image as a raw body (`Content-Type: image/jpeg`) or multipart field `image`. "
    "Later calls on any endpoint can pass the returned `image_id` instead of the image.",
    responses=ERRORS,
    openapi_extra=body_doc({}),
)
async def embed(
    predictor: PredictorDep, inp: ImageInputDep, timings: TimingsDep, deadline: DeadlineDep
) -> EmbedResponse:
    entry = await load_entry(predictor, inp, timings, deadline)
    return EmbedResponse(**image_meta(entry))
