"""OpenAPI documents of the inference operations, generated from the same request models that validate them.

`operation_doc(model)` -> `openapi_extra` for a route: its query parameters (the model's QUERY fields) and its
request body per content type (see service/routes/inputs.py). `ERRORS` documents every error status with the
one error shape and the headers that come with it.

Images are binary parts/bodies of an accepted format (JPEG, PNG, WEBP, BMP, TIFF, GIF; see
service/images/decode.py): `contentMediaType`/`encoding` say so, so that generators (schemathesis with
tests/service/schemathesis_hooks.py) can produce valid images.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Depends

from service.routes.deps import require_api_key
from service.routes.requests import IMAGE_ID_PATTERN, ImageRequest
from service.routes.responses import ErrorResponse

IMAGE_TYPES = "image/jpeg, image/png, image/webp, image/bmp, image/tiff, image/gif"
IMAGE_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary", "contentMediaType": "image/*",
                                "description": "The image file (JPEG, PNG, WEBP, BMP, TIFF or GIF)."}  # fmt: skip
RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": description, "model": ErrorResponse}
    if headers:
        doc["headers"] = headers
    return doc


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Empty or malformed body"),
    401: _error("Missing or wrong API key (when SAMCLIP_API_KEY is set)"),
    404: _error("Unknown image_id (evicted or never uploaded), or format=png with an index past the masks"),
    406: _error("The Accept header rules out the response's media type"),
    413: _error("Body over SAMCLIP_MAX_BODY_BYTES"),
    415: _error("Content type, content encoding or image format not accepted"),
    422: _error("Invalid image, parameters or prompts; too many new texts"),
    429: _error("Encoder queue full", RETRY_AFTER),
    500: _error("One inference batch failed (the server keeps serving)"),
    503: _error("Not ready: loading, failed load, or draining", RETRY_AFTER),
    504: _error("The request deadline passed while queued; the work never ran"),
}
PNG_200 = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
MASK_RESPONSES = {**ERRORS, 200: {"content": PNG_200, "description": "Masks as JSON, or ONE mask as PNG"}}


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline `$defs` references so a pydantic JSON schema can sit inside an OpenAPI operation."""
    schema = copy.deepcopy(schema)
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


def _parameters(model: type[ImageRequest], schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    params = []
    for name in model.QUERY:
        prop = _not_null(schema["properties"][name])
        description = prop.pop("description", "")
        params.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": description,
                "schema": prop,
            }
        )
    return params


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an absent parameter is the null of an optional field, so drop that branch."""
    prop = {k: v for k, v in prop.items() if k != "title"}
    options = [s for s in prop.get("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1 and "anyOf" in prop:
        del prop["anyOf"]
        prop.update(options[0])
    return prop


def _request_body(model: type[ImageRequest], schema: dict[str, Any]) -> dict[str, Any]:
    props = schema["properties"]
    image_id = next(s for s in props["image_id"]["anyOf"] if s.get("type") == "string")
    body_props = {name: props[name] for name in model.BODY}
    as_json: dict[str, Any] = {"type": "object", "required": ["image_id"], "additionalProperties": False,
                               "properties": {"image_id": image_id, **body_props}}  # fmt: skip
    multipart: dict[str, Any] = {"type": "object", "required": ["image"], "additionalProperties": False,
                                 "properties": {"image": IMAGE_SCHEMA}}  # fmt: skip
    encoding: dict[str, Any] = {"image": {"contentType": IMAGE_TYPES}}
    if model.BODY:
        as_json["anyOf"] = schema["anyOf"]
        fields = {
            "type": "object",
            "additionalProperties": False,
            "properties": body_props,
            "anyOf": schema["anyOf"],
        }
        multipart["properties"]["prompts"] = fields
        multipart["required"].append("prompts")
        encoding["prompts"] = {"contentType": "application/json"}
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": multipart, "encoding": encoding},
        "application/json": {"schema": as_json},
    }
    if model.RAW_BODY:
        raw = {"schema": {"type": "string", "format": "binary", "description": IMAGE_SCHEMA["description"]}}
        content["image/*"] = raw
        content["application/octet-stream"] = raw
    return {"required": True, "content": content}


ROUTING_HEADER = {
    "name": "X-Image-Id",
    "in": "header",
    "required": False,
    "description": "Routing hint for L7 proxies (consistent hash): the sha256 hex of the image bytes, which a "
    "client computes before uploading, or the image_id it sends. The server does not need it; a value that "
    "differs from the image is counted (samclip_routing_header_mismatches_total), a malformed one is refused.",
    "schema": {"type": "string", "pattern": IMAGE_ID_PATTERN},
}


def operation_doc(model: type[ImageRequest]) -> dict[str, Any]:
    """`openapi_extra` for the route that fills `model`."""
    schema = inline_refs(model.model_json_schema())
    parameters = [*_parameters(model, schema), ROUTING_HEADER]
    return {"parameters": parameters, "requestBody": _request_body(model, schema)}


def inference_router(prefix: str = "") -> APIRouter:
    """A router for inference endpoints: tagged, API key required."""
    return APIRouter(prefix=prefix, tags=["inference"], dependencies=[Depends(require_api_key)])


def post(router: APIRouter, path: str, model: type[ImageRequest], response_model: Any, summary: str,
         description: str, *, png: bool = False) -> Any:  # fmt: skip
    """`router.post` for an inference endpoint whose inputs are `model`: errors and request documented from it;
    png: the 200 answer may also be ONE mask as image/png."""
    return router.post(
        path,
        response_model=response_model,
        summary=summary,
        description=description,
        responses=MASK_RESPONSES if png else ERRORS,
        openapi_extra=operation_doc(model),
    )
