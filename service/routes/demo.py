"""GET / : the browser demo page, and GET /static/{name}: its files (service/static/, shipped as package data).

Plain files, no build step, no CDN: the page talks only to this server (its Content-Security-Policy allows
nothing else). Neither route needs the API key (the page has a field for it and sends `X-API-Key` on the
inference calls) and neither is part of the OpenAPI document.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import NotFound

STATIC = resources.files("service") / "static"
MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "rle.js": "text/javascript; charset=utf-8",
    "view.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The only files served (no path from the URL ever reaches the file system)."""
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; base-uri 'none'",
}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> Response:
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:
        raise NotFound(f"no static file {name!r}")
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=HEADERS)


@router.get("/")
async def index() -> Response:
    return _file("index.html")


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    return _file(name)
