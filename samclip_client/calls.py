"""One `Call` per endpoint: path, query parameters, extra body fields and the result parser. Shared by the
sync and the async client, so both send exactly the same requests (see exchange.py for how they are sent).

Parameters are query parameters (`?text=a&text=b`, booleans as "true"/"false"); the body carries the image
(raw bytes, or JSON `{"image_id": ...}`), and for /segment/prompt also the prompt fields. Coordinates are
original-image pixels; a point is (x, y) (foreground) or (x, y, label) with label 1 = foreground,
0 = background; a box is (x0, y0, x1, y1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samclip_client.errors import SamclipError
from samclip_client.results import (
    ClassifyResult,
    EmbedResult,
    Mask,
    MasksResult,
    PromptResult,
    RefineResult,
    encode_logits,
)

Point = Sequence[float]
Box = Sequence[float]


@dataclass(frozen=True)
class Call:
    """method + path; params: query parameters (None values dropped); body: fields sent next to the image
    (None = the endpoint takes a raw image body); parse: JSON -> result; image: whether it is about an image."""

    method: str
    path: str
    parse: Callable[[Any], Any]
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    image: bool = True

    def query(self) -> dict[str, Any]:
        out = {}
        for key, value in self.params.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, list | tuple):
                value = list(value)
            out[key] = value
        return out


def _texts(text: str | Sequence[str]) -> list[str]:
    return [text] if isinstance(text, str) else list(text)


def embed() -> Call:
    return Call("POST", "/embed", EmbedResult.from_json)


def classify(labels: Sequence[str], top_k: int | None) -> Call:
    return Call("POST", "/classify", ClassifyResult.from_json, {"labels": list(labels), "top_k": top_k})


def segment(text: str | Sequence[str]) -> Call:
    return Call("POST", "/segment", MasksResult.from_json, {"text": _texts(text), "format": "rle"})


def _instances_result(data: dict[str, Any]) -> MasksResult:
    result = MasksResult.from_json(data)
    if any(m.instance is None for m in result.masks):
        raise SamclipError(200, "unsupported", "the server ignored instances=true (it predates issue 14)")
    return result


def instances(text: str | Sequence[str], min_area: int | None, max_instances: int | None) -> Call:
    params = {"text": _texts(text), "instances": True, "min_area": min_area, "max_instances": max_instances}
    return Call("POST", "/segment", _instances_result, {**params, "format": "rle"})


def refine(text: str, **options: Any) -> Call:
    return Call("POST", "/segment/refine", RefineResult.from_json, {"text": text, **options, "format": "rle"})


def everything(labels: Sequence[str] | None, **options: Any) -> Call:
    params = {"labels": None if labels is None else list(labels), **options, "format": "rle"}
    return Call("POST", "/segment/everything", MasksResult.from_json, params)


def _point(p: Point) -> dict[str, Any]:
    if len(p) not in (2, 3):
        raise ValueError(f"a point is (x, y) or (x, y, label), got {p!r}")
    return {"x": float(p[0]), "y": float(p[1]), "label": int(p[2]) if len(p) == 3 else 1}


def mask_prompt(value: Mask | np.ndarray | str | None) -> str | None:
    """A mask prompt as the server takes it: a previous Mask (with low_res_logits), a (4h, 4w) logits array,
    or the base64 .npy text itself."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mask):
        if value.low_res_logits is None:
            raise ValueError("this mask carries no low_res_logits: ask for it with return_logits=True")
        return value.low_res_logits
    return encode_logits(value)


def prompt(
    points: Sequence[Point] | None,
    box: Box | None,
    boxes: Sequence[Box] | None,
    prompts: Sequence[dict[str, Any]] | None,
    multimask: bool,
    mask_input: Mask | np.ndarray | str | None,
    return_logits: bool,
) -> Call:
    """`points` (+ `box`) describe ONE object; each of `boxes` is one more object; `prompts` are raw prompt
    objects ({"points": [{"x", "y", "label"}], "box": [...], "mask_input_from": ...}) sent first."""
    specs = list(prompts or [])
    if points or box is not None:
        spec: dict[str, Any] = {"points": [_point(p) for p in points or []]}
        if box is not None:
            spec["box"] = [float(v) for v in box]
        specs.append(spec)
    body: dict[str, Any] = {"prompts": specs, "multimask": multimask}
    if boxes:
        body["boxes"] = [[float(v) for v in b] for b in boxes]
    if (encoded := mask_prompt(mask_input)) is not None:
        body["mask_input"] = encoded
    if not specs and not boxes:
        raise ValueError("give points, a box, boxes or prompts")
    params = {"return_logits": return_logits or None, "format": "rle"}
    return Call("POST", "/segment/prompt", PromptResult.from_json, params, body)


def get(path: str) -> Call:
    """A GET without an image (/info, /readyz, /healthz): the JSON as a dict."""
    return Call("GET", path, lambda data: data, image=False)
