"""Schemathesis generators for the two documented string kinds JSON Schema cannot spell out: image files
(`contentMediaType: image/*`, multipart `encoding`) and mask prompts (`format: samclip-mask-logits`, base64 of a
float32 .npy (4h, 4w); 4h from SAMCLIP_MASK_GRID). Loaded with SCHEMATHESIS_HOOKS=schemathesis_hooks."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

IMAGE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "image/gif",
    "image/*",
    "application/octet-stream",  # the documented raw-body alternative to image/*: the same image bytes
)


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """A valid image the server accepts: 8..96 px a side (aspect <= 100), any accepted format, any mode."""
    width, height = draw(st.integers(8, 96)), draw(st.integers(8, 96))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"]))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA"] if fmt in ("PNG", "WEBP", "TIFF") else ["RGB", "L"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def mask_logits(draw: st.DrawFn) -> str:
    grid = int(os.environ.get("SAMCLIP_MASK_GRID", "64"))
    seed = draw(st.integers(0, 2**16))
    arr = np.random.default_rng(seed).normal(0, 5, (grid, grid)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


schemathesis.openapi.media_type(IMAGE_TYPES[0], images(), aliases=IMAGE_TYPES[1:])
schemathesis.openapi.format("samclip-mask-logits", mask_logits())


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """Drop one generator artefact, nothing else: when a multipart body has a part with a custom media-type
    strategy (our `image`), schemathesis' coverage phase fills every other required part it has no strategy
    for with "" (specs/openapi/coverage/_operation.py, `_generate_multipart_body_from_custom_strategies`) and
    still labels the case positive. An empty `prompts` part is not the JSON object the schema requires, so it
    is not schema-valid data; negative-mode cases are kept (the server must and does reject them)."""
    body = case.body
    positive = case.meta is None or case.meta.generation.mode.is_positive
    return not (positive and isinstance(body, dict) and body.get("prompts") == "")
