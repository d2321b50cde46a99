"""Segmentation endpoints, all on the one cached image embedding:

- POST /segment?text=dog[&text=cat]: text-segment from the CLIP head, one mask per text. Background rule:
  a pixel belongs to text i when text i has the highest similarity among all texts AND the
  `background_prompts` setting's texts (default "background"); otherwise it is background.
- POST /segment/prompt: SAM point/box/mask prompts as JSON (multipart form field `prompts` next to `image`,
  or a JSON body with `image_id`); `multimask` gives 3 masks per prompt; masks carry SAM's predicted IoU.
- POST /segment/refine?text=dog: CLIP-head coarse mask -> sampled point prompts + mask prompt -> SAM decoder.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import ValidationError

from service.deps import (
    DeadlineDep,
    ImageInput,
    ImageInputDep,
    MaskFormatDep,
    MaskIndexDep,
    PredictorDep,
    SettingsDep,
    TimingsDep,
    check_texts,
    load_entry,
    require_api_key,
)
from service.errors import InvalidInput
from service.pipeline.prompts import PromptRequest
from service.routes.embed import ERRORS
from service.routes.render import PNG_RESPONSE_DOC, body_doc, image_meta, masks_to_json, png_response
from service.schemas import (
    PromptSegmentResponse,
    RefineResponse,
    SegmentResponse,
    SegmentTextRequest,
)
from service.settings import Settings

router = APIRouter(prefix="/segment", tags=["inference"], dependencies=[Depends(require_api_key)])

RESPONSES = {
    **ERRORS,
    200: {
        **PNG_RESPONSE_DOC[200],
        "description": "Masks as JSON, or ONE mask as PNG (format=png / Accept: image/png)",
    },
}
TEXT_FIELD = {"text": {"type": "array", "items": {"type": "string"}, "description": "Repeat per text."}}
PROMPTS_FIELD = {
    "prompts": {
        "type": "string",
        "description": 'JSON: {"prompts": [{"points": [{"x": 10, "y": 20, "label": 1}], "box": null}], '
        '"boxes": [[x0, y0, x1, y1]], "multimask": false} or just the list of prompts.',
    }
}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _as_bool(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise InvalidInput(f"{name} must be true or false")


def _as_int(value: Any, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be an integer") from None
    if not low <= number <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return number


@router.post(
    "",
    response_model=SegmentResponse,
    summary="Text-prompted segmentation (CLIP head), one mask per text",
    description="`curl -F image=@dog.jpg 'http://127.0.0.1:8000/segment?text=dog&text=cat'`. "
    "A pixel belongs to a text when that text scores highest among all texts and the background prompts.",
    responses=RESPONSES,
    openapi_extra=body_doc(TEXT_FIELD, SegmentTextRequest),
)
async def segment_text(
    predictor: PredictorDep,
    inp: ImageInputDep,
    settings: SettingsDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    fmt: MaskFormatDep,
    text: Annotated[list[str], Query(description="Text(s) to segment (repeat the parameter).")] = [],  # noqa: B006
    index: MaskIndexDep = 0,
) -> Any:
    texts = check_texts(inp.values("text", text), "text", settings.max_texts, settings.max_text_chars)
    entry = await load_entry(predictor, inp, timings, deadline)
    results = await predictor.segment_text(entry, texts, timings)
    if fmt == "png":
        return await png_response(results, index, entry, timings)
    masks = await masks_to_json(results, fmt, timings)
    return SegmentResponse(**image_meta(entry), masks=masks, background_prompts=settings.background_prompts)


def parse_prompt_request(inp: ImageInput, settings: Settings, multimask: bool | None) -> PromptRequest:
    """Prompts from the JSON body or the form field `prompts` -> validated PromptRequest (422 otherwise)."""
    raw: Any
    if inp.json is not None:
        raw = {k: v for k, v in inp.json.items() if k != "image_id"}
    elif inp.fields.get("prompts"):
        try:
            raw = json.loads(inp.fields["prompts"][-1])
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"form field `prompts` is not valid JSON: {exc}") from None
    else:
        raise InvalidInput("no prompts: send form field `prompts` (JSON) or a JSON body with `prompts`")
    if isinstance(raw, list):
        raw = {"prompts": raw}
    if not isinstance(raw, dict):
        raise InvalidInput("`prompts` must be a JSON object or a list of prompts")
    flag = inp.value("multimask", multimask)
    if flag is not None:
        raw["multimask"] = _as_bool(flag, "multimask", False)
    _check_prompt_counts(raw, settings)
    try:
        return PromptRequest.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'prompts'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidInput(f"invalid prompts: {detail}") from None


def _check_prompt_counts(raw: dict[str, Any], settings: Settings) -> None:
    prompts = raw.get("prompts") or []
    boxes = raw.get("boxes") or []
    if isinstance(prompts, list) and isinstance(boxes, list):
        total = len(prompts) + len(boxes)
        if total > settings.max_prompts:
            raise InvalidInput(f"too many prompts: {total} > {settings.max_prompts} (max_prompts)")
        for i, prompt in enumerate(prompts):
            points = prompt.get("points") if isinstance(prompt, dict) else None
            if isinstance(points, list) and len(points) > settings.max_points_per_prompt:
                raise InvalidInput(
                    f"prompt {i} has {len(points)} points > {settings.max_points_per_prompt} (max_points_per_prompt)"
                )


@router.post(
    "/prompt",
    response_model=PromptSegmentResponse,
    summary="Point / box / mask prompted segmentation (SAM decoder)",
    description='Multipart: `-F image=@x.jpg -F \'prompts=[{"points":[{"x":100,"y":80,"label":1}]}]\'`; '
    'or JSON: `{"image_id": "...", "prompts": [...], "boxes": [[x0,y0,x1,y1]], "multimask": true}`. '
    "Coordinates in original-image pixels.",
    responses=RESPONSES,
    openapi_extra=body_doc(PROMPTS_FIELD, PromptRequest),
)
async def segment_prompt(
    predictor: PredictorDep,
    inp: ImageInputDep,
    settings: SettingsDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    fmt: MaskFormatDep,
    multimask: Annotated[bool | None, Query(description="3 masks per prompt instead of 1.")] = None,
    index: MaskIndexDep = 0,
) -> Any:
    request = parse_prompt_request(inp, settings, multimask)
    entry = await load_entry(predictor, inp, timings, deadline)
    groups = await predictor.segment_prompts(entry, request, timings)
    if fmt == "png":
        return await png_response([m for group in groups for m in group], index, entry, timings)
    sizes = [len(group) for group in groups]
    flat = await masks_to_json([m for group in groups for m in group], fmt, timings)
    prompts, start = [], 0
    for size in sizes:
        prompts.append({"masks": flat[start : start + size]})
        start += size
    return PromptSegmentResponse(**image_meta(entry), prompts=prompts)


@router.post(
    "/refine",
    response_model=RefineResponse,
    summary="CLIP→SAM refine: text coarse mask -> sampled points + mask prompt -> SAM decoder",
    description="`curl -F image=@x.jpg 'http://127.0.0.1:8000/segment/refine?text=dog&return_coarse=true'`. "
    "PNG: index 0 is the fine mask, index 1 the coarse mask (when return_coarse).",
    responses=RESPONSES,
    openapi_extra=body_doc(TEXT_FIELD),
)
async def segment_refine(
    predictor: PredictorDep,
    inp: ImageInputDep,
    settings: SettingsDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    fmt: MaskFormatDep,
    text: Annotated[list[str], Query(description="ONE text to segment.")] = [],  # noqa: B006
    num_points: Annotated[
        int | None, Query(description="Point prompts to sample (default: setting).")
    ] = None,
    seed: Annotated[int | None, Query(description="Sampling seed (default: setting).")] = None,
    return_coarse: Annotated[bool | None, Query(description="Also return the CLIP-head mask.")] = None,
    return_points: Annotated[bool | None, Query(description="Also return the sampled points.")] = None,
    index: MaskIndexDep = 0,
) -> Response | RefineResponse:
    texts = check_texts(inp.values("text", text), "text", 1, settings.max_text_chars)
    n = _as_int(
        inp.value("num_points", num_points),
        "num_points",
        settings.refine_points,
        1,
        settings.max_points_per_prompt,
    )
    rng_seed = _as_int(inp.value("seed", seed), "seed", settings.refine_seed, 0, 2**32 - 1)
    want_coarse = _as_bool(inp.value("return_coarse", return_coarse), "return_coarse", False)
    want_points = _as_bool(inp.value("return_points", return_points), "return_points", False)
    entry = await load_entry(predictor, inp, timings, deadline)
    result = await predictor.refine(entry, texts[0], n, rng_seed, timings)
    results = [result.mask] + ([result.coarse] if want_coarse else [])
    if fmt == "png":
        return await png_response(results, index, entry, timings)
    rendered = await masks_to_json(results, fmt, timings)
    points = [{"x": x, "y": y, "label": int(label)} for x, y, label in result.points] if want_points else None
    return RefineResponse(
        **image_meta(entry), mask=rendered[0], coarse=rendered[1] if want_coarse else None, points=points
    )
