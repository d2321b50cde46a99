"""Shared by the routers: mask rendering (JSON RLE/polygon or one PNG) and OpenAPI request-body docs.

PNG rule: a PNG response carries ONE mask, 8-bit greyscale (255 inside, 0 outside), original image size.
`index` (default 0) picks it among the masks the JSON response would hold, in the same order (for
/segment/prompt: prompt-major, i.e. prompt 0's masks first). An index past the end -> 422. Headers describe it:
X-Mask-Index, X-Mask-Count, X-Mask-Score, X-Mask-Bbox (x,y,w,h), X-Mask-Area, X-Mask-Label (percent-encoded),
X-Image-Id, X-Image-Cached.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.errors import InvalidInput
from service.timing import Timings

PNG_RESPONSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
    404: {"description": "Unknown image_id (not in the cache)"},
    413: {"description": "Body over max_body_bytes"},
    415: {"description": "Not an accepted image format / content type"},
    422: {"description": "Invalid image, prompts, texts or parameters"},
    429: {"description": "Encoder queue full (Retry-After)"},
    504: {"description": "Deadline passed while queued"},
}


async def masks_to_json(results: list[Any], fmt: str, timings: Timings) -> list[dict[str, Any]]:
    """MaskResults -> JSON dicts (service.pipeline.postprocess.mask_to_json), off the event loop."""
    from service.pipeline.postprocess import mask_to_json

    with timings.measure("postprocess"):
        return await run_in_threadpool(lambda: [mask_to_json(r, fmt) for r in results])


async def png_response(results: list[Any], index: int, entry: Any, timings: Timings) -> Response:
    """One mask of `results` as image/png (see module docstring)."""
    from service.pipeline.postprocess import encode_png, mask_area, mask_bbox

    if index >= len(results):
        raise InvalidInput(f"index {index} is out of range: the response has {len(results)} mask(s)")
    result = results[index]
    with timings.measure("postprocess"):
        data = await run_in_threadpool(encode_png, result.mask)
    headers = {
        "X-Mask-Index": str(index),
        "X-Mask-Count": str(len(results)),
        "X-Mask-Score": f"{float(result.score):.6g}",
        "X-Mask-Bbox": ",".join(str(v) for v in mask_bbox(result.mask)),
        "X-Mask-Area": str(mask_area(result.mask)),
        "X-Image-Id": entry.image_id,
        "X-Image-Cached": "true" if entry.cached else "false",
    }
    if result.label is not None:
        headers["X-Mask-Label"] = quote(result.label)
    return Response(data, media_type="image/png", headers=headers)


def image_meta(entry: Any) -> dict[str, Any]:
    return {"image_id": entry.image_id, "width": entry.width, "height": entry.height, "cached": entry.cached}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline `$defs` references so a pydantic JSON schema can sit inside an OpenAPI requestBody."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(copy.deepcopy(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def body_doc(form_fields: dict[str, Any], json_model: type[BaseModel] | None = None) -> dict[str, Any]:
    """`openapi_extra` documenting the request body: raw image, multipart (image + fields), JSON (image_id)."""
    props = {"image": {"type": "string", "format": "binary", "description": "The image file."}}
    props["image_id"] = {"type": "string", "description": "Instead of `image`: id from an earlier response."}
    props.update(form_fields)
    content: dict[str, Any] = {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": props}},
    }
    if json_model is not None:
        content["application/json"] = {"schema": _inline_refs(json_model.model_json_schema())}
    return {"requestBody": {"required": False, "content": content}}
