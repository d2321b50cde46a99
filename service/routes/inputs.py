"""ONE dependency fills an endpoint's request model from the query string and the body (see requests.py).

Bodies (exactly what /openapi.json documents):
- `image/*` or `application/octet-stream`: the raw image bytes (not for /segment/prompt);
- `multipart/form-data`: file field `image`, plus field `prompts` (JSON) for /segment/prompt; nothing else;
- `application/json`: an object with `image_id` (sha256 hex of an image sent earlier) and, for
  /segment/prompt, the prompt fields.
The uploaded bytes are only hashed here; the image store decodes them later, and never when cached.
Errors: 400 empty body, 415 other content types / encodings, 422 anything the model rejects, 406 when the
Accept header allows neither JSON nor PNG.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from starlette.datastructures import UploadFile
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from service.errors import BadRequest, InvalidInput, NotAcceptable, UnsupportedMediaType
from service.images.source import ImageSource
from service.routes.requests import IMAGE_ID_PATTERN, ImageRequest
from service.settings import Settings

RAW_TYPES = ("application/octet-stream",)
JSON_TYPE, PNG_TYPE = "application/json", "image/png"
HINT = (
    "send the image as a raw body (Content-Type: image/jpeg), as multipart field `image` "
    '(curl -F image=@photo.jpg), or a JSON body {"image_id": ...}'
)


@dataclass
class Body:
    """What the body carried: uploaded bytes, and model fields (image_id, prompt fields)."""

    data: bytes | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_multipart(request: Request, settings: Settings, model: type[ImageRequest]) -> Body:
    try:
        form = await request.form(
            max_files=1, max_fields=settings.max_form_fields, max_part_size=settings.max_form_part_bytes
        )
    except FormParserError as exc:  # newer starlette turns these into 400 itself; older ones do not
        raise BadRequest(f"malformed multipart body: {exc}") from None
    body = Body()
    for name, value in form.multi_items():
        if name == "image" and isinstance(value, UploadFile):
            body.data = await value.read()
            await value.close()  # drop the spooled temp file now
        elif name == "prompts" and "prompts" in model.BODY and isinstance(value, str):
            body.fields.update(_prompt_fields(value, model))
        else:
            kind = "file" if isinstance(value, UploadFile) else "field"
            raise InvalidInput(f"unexpected multipart {kind} {name!r}; {HINT}")
    if body.data is None:
        raise InvalidInput(f"multipart body without a file field `image`; {HINT}")
    if not body.data:
        raise BadRequest("multipart field `image` is empty")
    if model.BODY and not body.fields:
        raise InvalidInput("multipart body without field `prompts` (JSON)")
    return body


def _prompt_part(text: str) -> dict[str, Any]:
    """Multipart `prompts`: a JSON object of the prompt fields, or just the list of prompts."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"multipart field `prompts` is not valid JSON: {exc}") from None
    if isinstance(value, list):
        return {"prompts": value}
    if not isinstance(value, dict) or "image_id" in value:
        raise InvalidInput(
            "multipart field `prompts` must be a JSON object of prompt fields or a list of prompts"
        )
    return value


def _prompt_fields(text: str, model: type[ImageRequest]) -> dict[str, Any]:
    value = _prompt_part(text)
    _only_body_fields(value, model, "multipart field `prompts`")
    return value


async def _read_json(request: Request, model: type[ImageRequest]) -> Body:
    raw = await request.body()
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"malformed JSON body: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("the JSON body must be an object")
    if "image_id" not in value:
        raise InvalidInput(
            "a JSON body needs `image_id` (to send the image itself, use multipart or a raw body)"
        )
    _only_body_fields(value, model, "JSON body")
    return Body(fields=value)


def _only_body_fields(value: dict[str, Any], model: type[ImageRequest], where: str) -> None:
    extra = sorted(set(value) - {"image_id", *model.BODY})
    if extra:
        query = [name for name in extra if name in model.QUERY]
        hint = f" ({', '.join(query)}: query parameters here, e.g. ?{query[0]}=...)" if query else ""
        raise InvalidInput(f"{where}: unknown field(s) {', '.join(extra)}{hint}")


async def read_body(request: Request, settings: Settings, model: type[ImageRequest]) -> Body:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed"
        )
    media = _media_type(request)
    if media == "multipart/form-data":
        return await _read_multipart(request, settings, model)
    if media == JSON_TYPE:
        return await _read_json(request, model)
    if model.RAW_BODY and (media.startswith("image/") or media in RAW_TYPES):
        data = await request.body()
        if not data:
            raise BadRequest("empty request body; send the image bytes")
        return Body(data=data)
    if not media and not await request.body():
        raise BadRequest(f"no image: {HINT}")
    accepted = "multipart/form-data or application/json" if not model.RAW_BODY else "image/*, " + HINT
    raise UnsupportedMediaType(f"Content-Type {media or '(none)'!r} is not accepted here; use {accepted}")


def query_fields(request: Request, model: type[ImageRequest]) -> dict[str, Any]:
    """The model's QUERY fields present in the query string (lists: every value of a repeated parameter; a
    single-valued parameter given twice is refused)."""
    params = request.query_params
    out: dict[str, Any] = {}
    for name in model.QUERY:
        if name not in params:
            continue
        values = params.getlist(name)
        if str(model.model_fields[name].annotation).startswith("list["):
            out[name] = values
        elif len(values) > 1:
            raise InvalidInput(f"query parameter `{name}` given {len(values)} times; it takes one value")
        else:
            out[name] = values[0]
    return out


def negotiate(accept: str | None, explicit: str | None) -> str:
    """The mask format: `explicit` (rle | polygon | png) when given, else PNG only when the Accept header prefers
    image/png to application/json (q-values honoured; JSON wins ties). 406 when Accept rules out the result."""
    header = parse_accept_header(accept or "*/*", MIMEAccept)
    if explicit is not None:
        wanted = PNG_TYPE if explicit == "png" else JSON_TYPE
        if header.quality(wanted) <= 0:
            raise NotAcceptable(f"format={explicit} gives {wanted}, which the Accept header rules out")
        return explicit
    best = header.best_match([JSON_TYPE, PNG_TYPE])
    if best is None:
        raise NotAcceptable("the Accept header allows neither application/json nor image/png")
    return "png" if best == PNG_TYPE else "rle"


def describe(exc: ValidationError) -> str:
    """A short, readable summary of a pydantic validation error (first five problems)."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "request"
        message = err["msg"]
        if err["type"] == "string_pattern_mismatch":
            message = (
                "must not be blank or start/end with white space"
                if where != "image_id"
                else ("must be a sha256 hex digest (64 lowercase hex characters)")
            )
        elif err["type"] == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def check_routing_header(request: Request, image_id: str) -> None:
    """`X-Image-Id` is a routing hint: a malformed one is refused (422), one naming another image is counted."""
    hint = request.headers.get("x-image-id")
    if hint is None:
        return
    if not re.fullmatch(IMAGE_ID_PATTERN, hint):
        raise InvalidInput(
            "header X-Image-Id must be the sha256 hex of the image bytes (64 lowercase hex digits)"
        )
    if hint != image_id:
        request.app.state.service.metrics.routing_mismatches.inc()


def filled(model: type[ImageRequest]) -> Callable[[Request], Awaitable[ImageRequest]]:
    """The dependency that fills `model` for one request (see the module docstring)."""

    async def fill(request: Request) -> ImageRequest:
        settings: Settings = request.app.state.service.settings
        body = await read_body(request, settings, model)
        try:
            req = model.model_validate({**body.fields, **query_fields(request, model)})
        except ValidationError as exc:
            raise InvalidInput(describe(exc)) from None
        req._source = await ImageSource.upload(body.data) if body.data is not None else None
        if req._source is None:
            req._source = ImageSource.by_id(req.image_id or "")
        check_routing_header(request, req.source.key)
        if "format" in model.model_fields:
            req._format = negotiate(request.headers.get("accept"), getattr(req, "format", None))
        return req

    return fill
