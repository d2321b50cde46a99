"""FastAPI dependencies (`Annotated` aliases) shared by the routers.

- `StateDep`, `SettingsDep`, `TimingsDep`, `DeadlineDep`: per-app state, settings, per-request timings, deadline.
- `PredictorDep`: the Predictor, or 503 NotReady (loading, failed load, draining).
- `require_api_key`: optional auth (`Authorization: Bearer KEY` or `X-API-Key: KEY`, constant-time compare).
- `ImageInputDep`: the request's image, from a raw `image/*` body, multipart field `image`, or `image_id`
  (query, form or JSON body), plus the other form/JSON fields for the route to read. An uploaded image is only
  hashed here and admitted (`Predictor.admit`: 429 at once when the encoder queue is full, before any decode);
  the Predictor decodes it later inside its bounded decode gate, and never when it is cached or in flight.
- `MaskFormatDep`: `format=rle|polygon|png`, or PNG when `Accept: image/png` and no `format` is given.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.errors import BadRequest, InvalidInput, NotReady, Unauthorized, UnsupportedMediaType
from service.lifecycle import ServiceState
from service.schemas import MaskFormat
from service.settings import Settings
from service.timing import Timings

RAW_IMAGE_TYPES = ("application/octet-stream",)
# `curl --data-binary @x.jpg URL` labels raw bytes as a urlencoded form: recognise image signatures instead.
IMAGE_MAGIC = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"RIFF",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_IMAGE_ID_CHARS = 256


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_timings(request: Request) -> Timings:
    timings = getattr(request.state, "timings", None)
    if timings is None:
        timings = request.state.timings = Timings()
    return timings


TimingsDep = Annotated[Timings, Depends(get_timings)]


def get_deadline(request: Request, settings: SettingsDep) -> float:
    """`time.monotonic()` value after which queued work is abandoned (504)."""
    started = getattr(request.state, "started", None) or time.monotonic()
    return started + settings.request_timeout_s


DeadlineDep = Annotated[float, Depends(get_deadline)]


def get_predictor(request: Request, state: StateDep) -> Any:
    admitted = bool(getattr(request.state, "admitted", False))
    if not state.lifecycle.may_serve(admitted) or state.predictor is None:
        raise NotReady(f"not ready: {state.lifecycle.reason}", headers={"Retry-After": "5"})
    return state.predictor


PredictorDep = Annotated[Any, Depends(get_predictor)]


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """401 unless the configured API key is given; no-op when `api_key` is unset."""
    if settings.api_key is None:
        return
    supplied: str | None = None
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        supplied = credentials.strip()
    if supplied is None:
        supplied = request.headers.get("x-api-key")
    expected = settings.api_key.get_secret_value().encode()
    if supplied is None or not hmac.compare_digest(supplied.encode(), expected):
        raise Unauthorized("missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


@dataclass
class ImageInput:
    """What a request carried. `image` or `image_id`, never both; `image` is an admitted
    `service.pipeline.admission.EncodedImage` (bytes + sha256) for a predictor with `admit`, else a decoded
    `DecodedImage`; `fields`: other form fields (name -> values); `json`: the JSON object body, if any."""

    image: Any = None
    image_id: str | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    json: dict[str, Any] | None = None

    def values(self, name: str, query: list[str] | None = None) -> list[str]:
        """All values of `name` from the query, form fields and JSON body (a JSON string or list)."""
        out = list(query or [])
        out += self.fields.get(name, [])
        if self.json is not None and name in self.json:
            value = self.json[name]
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) for v in items):
                raise InvalidInput(f"`{name}` must be a string or a list of strings")
            out += items
        return out

    def value(self, name: str, query: Any = None) -> Any:
        """One value from the query, else the form, else the JSON body; None if absent."""
        if query is not None:
            return query
        if self.fields.get(name):
            return self.fields[name][-1]
        if self.json is not None:
            return self.json.get(name)
        return None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_form(request: Request, settings: Settings, parsed: ImageInput) -> bytes | None:
    form = await request.form(
        max_files=1, max_fields=settings.max_form_fields, max_part_size=settings.max_form_part_bytes
    )
    data: bytes | None = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "image":
                raise BadRequest(f"unexpected file field {name!r}; send the image as field `image`")
            data = await value.read()
            await value.close()  # drop the spooled temp file now
            if not data:
                raise BadRequest("multipart field `image` is empty")
        elif name == "image":
            raise BadRequest("multipart field `image` must be a file part (curl -F image=@photo.jpg)")
        else:
            parsed.fields.setdefault(name, []).append(value)
    return data


async def _parse_body(request: Request, settings: Settings) -> tuple[ImageInput, bytes | None]:
    parsed = ImageInput()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed"
        )
    media = _media_type(request)
    if media == "application/x-www-form-urlencoded":
        body = await request.body()  # cached: the form parser below re-reads it from memory
        if body.startswith(IMAGE_MAGIC):
            return parsed, body
    if media in FORM_TYPES:
        return parsed, await _read_form(request, settings, parsed)
    body = await request.body()
    if media.startswith("image/") or media in RAW_IMAGE_TYPES:
        if not body:
            raise BadRequest("empty request body; send the image bytes")
        return parsed, body
    if media == "application/json":
        if not body:
            return parsed, None
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"malformed JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInput("the JSON body must be an object")
        parsed.json = data
        return parsed, None
    if body or media:
        raise UnsupportedMediaType(
            f"Content-Type {media or '(none)'!r} is not accepted; use image/*, multipart/form-data "
            "(field `image`) or application/json with image_id"
        )
    return parsed, None


async def get_image_input(
    request: Request,
    settings: SettingsDep,
    timings: TimingsDep,
    image_id: Annotated[
        str | None, Query(description="Id from an earlier response, instead of sending the image again.")
    ] = None,
) -> AsyncIterator[ImageInput]:
    from service.pipeline.admission import EncodedImage, sha256_hex
    from service.pipeline.decode import decode_image

    parsed, data = await _parse_body(request, settings)
    image_id = parsed.value("image_id", image_id)
    if image_id is not None and (
        not isinstance(image_id, str) or not 0 < len(image_id) <= MAX_IMAGE_ID_CHARS
    ):
        raise InvalidInput(f"image_id must be a non-empty string of at most {MAX_IMAGE_ID_CHARS} characters")
    if data is not None and image_id is not None:
        raise InvalidInput("send either an image or image_id, not both")
    if data is None and image_id is None:
        raise BadRequest(
            "no image: send a raw image body (Content-Type: image/*), multipart field `image`, or image_id"
        )
    parsed.image_id = image_id
    if data is None:
        yield parsed
        return
    predictor = get_state(request).predictor
    if not callable(getattr(predictor, "admit", None)):  # a predictor without admission: decode now
        with timings.measure("decode"):
            parsed.image = await run_in_threadpool(decode_image, data, settings)
        yield parsed
        return
    image = EncodedImage(data=data, sha256=await sha256_hex(data))
    predictor.admit(image)  # QueueFull (429) here, before any decode work
    parsed.image = image
    try:
        yield parsed
    finally:
        image.release()  # a reservation the route never used (e.g. it failed validation first)


ImageInputDep = Annotated[ImageInput, Depends(get_image_input, scope="function")]


def get_mask_format(
    request: Request,
    fmt: Annotated[
        MaskFormat | None,
        Query(
            alias="format",
            description="rle (default): COCO RLE in JSON; polygon: polygons in JSON; png: one mask as an "
            "8-bit PNG (0 / 255), chosen by `index`. `Accept: image/png` selects png when format is absent.",
        ),
    ] = None,
) -> MaskFormat:
    if fmt is not None:
        return fmt
    accept = request.headers.get("accept", "").lower()
    return "png" if "image/png" in accept else "rle"


MaskFormatDep = Annotated[MaskFormat, Depends(get_mask_format)]

MaskIndexDep = Annotated[
    int,
    Query(ge=0, description="format=png only: which mask of the response (in response order) to return."),
]


def check_texts(texts: list[str], name: str, limit: int, max_chars: int) -> list[str]:
    """Strip, then 422 on empty, too many, too long or duplicate texts."""
    cleaned = [t.strip() for t in texts]
    if not cleaned:
        raise InvalidInput(f"give at least one `{name}`")
    if len(cleaned) > limit:
        raise InvalidInput(f"too many `{name}` values: {len(cleaned)} > {limit}")
    for text in cleaned:
        if not text:
            raise InvalidInput(f"`{name}` values must not be empty")
        if len(text) > max_chars:
            raise InvalidInput(f"a `{name}` value is longer than {max_chars} characters")
    if len(set(cleaned)) != len(cleaned):
        raise InvalidInput(f"duplicate `{name}` values")
    return cleaned


async def load_entry(predictor: Any, inp: ImageInput, timings: Timings, deadline: float) -> Any:
    """The predictor's cache entry (encoder outputs + image meta) for the request's `image` or `image_id`."""
    return await predictor.get_entry(
        image=inp.image, image_id=inp.image_id, timings=timings, deadline=deadline
    )
