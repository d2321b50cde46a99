"""Response models for the HTTP API (they drive the OpenAPI document at /docs and /openapi.json).

Coordinates are original-image pixels: x right, y down, origin at the top-left corner of the top-left pixel.
Masks: `segmentation` is COCO RLE (`{"size": [H, W], "counts": str}`, column-major, pycocotools compressed)
for `format=rle`, or a list of polygons `[[x0, y0, x1, y1, ...], ...]` for `format=polygon`; `bbox` is
COCO `[x, y, width, height]`; `area` is the number of mask pixels.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorResponse(BaseModel):
    """Every error of the service."""

    error: str = Field(
        description="Human-readable message.", examples=["image_id 'ab12' is not in the cache"]
    )
    error_type: str = Field(description="Stable machine-readable kind.", examples=["not_found"])
    request_id: str = Field(description="Echo of X-Request-ID (generated when absent).", examples=["5f0c..."])


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width] of the original image.", examples=[[480, 640]])
    counts: str = Field(description="pycocotools compressed RLE counts (column-major).")


class MaskOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    segmentation: RLE | list[list[float]] = Field(
        description="COCO RLE (format=rle) or polygons [[x0,y0,x1,y1,...],...] (format=polygon)."
    )
    bbox: list[int] = Field(
        description="COCO box [x, y, width, height] in pixels.", examples=[[10, 20, 100, 80]]
    )
    area: int = Field(description="Mask pixel count.", examples=[5321])
    score: float = Field(description="Mask confidence (text similarity or predicted IoU).", examples=[0.87])
    iou_prediction: float | None = Field(None, description="SAM decoder's predicted IoU (prompt/refine).")
    label: str | None = Field(None, description="The text that produced this mask (text segment/refine).")
    low_res_logits: str | None = Field(
        None,
        description="With return_logits=true: base64 of a float32 .npy array (4h, 4w) of the decoder's low-res "
        "logits, accepted back as `mask_input` / `mask_input_from` (null for masks that have none).",
    )


class ImageMeta(BaseModel):
    image_id: str = Field(description="Send back as `image_id` to reuse the cached embedding.")
    width: int = Field(description="Original image width in pixels (after EXIF orientation).", examples=[640])
    height: int = Field(
        description="Original image height in pixels (after EXIF orientation).", examples=[480]
    )
    cached: bool = Field(description="True when the image embedding came from the cache (no encoder run).")


class EmbedResponse(ImageMeta):
    """The image was encoded (or found in the cache); use image_id in later calls."""


class LabelScoreOut(BaseModel):
    label: str = Field(examples=["a dog"])
    probability: float = Field(
        description="Softmax over the given labels (all labels sum to 1).", examples=[0.93]
    )
    logit: float = Field(description="logit_scale * cosine similarity.", examples=[23.4])


class ClassifyResponse(ImageMeta):
    labels: list[LabelScoreOut] = Field(description="Ranked by probability, highest first (top_k of them).")


class InstanceMaskOut(MaskOut):
    instance: int = Field(
        description="instances=true: index of this object among its text's (0 = best score)."
    )
    text_score: float = Field(
        description="Mean probability of the text over the text-mask part it came from."
    )


class SegmentResponse(ImageMeta):
    masks: list[InstanceMaskOut | MaskOut] = Field(
        description="One mask per `text`, in request order; with instances=true one mask per object instance "
        "(SAM box prompt from each connected part of the text's mask), by text then score descending."
    )
    background_prompts: list[str] = Field(
        description="Background classes used: a pixel belongs to text i only where text i scores higher than "
        "every other text and every background prompt."
    )


class EverythingMaskOut(MaskOut):
    stability_score: float = Field(description="IoU of the mask thresholded at logit +1 and at -1 (SAM's).")
    point: list[float] = Field(description="The grid point [x, y] (original px) that produced the mask.")
    label_score: float | None = Field(
        None, description="With labels: softmax probability of `label` over the given labels."
    )


class EverythingResponse(ImageMeta):
    masks: list[EverythingMaskOut] = Field(
        description="SAM automatic masks after the IoU / stability filters and box NMS, by score (predicted "
        "IoU) descending."
    )
    labels: list[str] | None = Field(description="The labels the masks were labelled with (null: none).")


class PromptMasks(BaseModel):
    masks: list[MaskOut] = Field(description="1 mask, or 3 when multimask=true (SAM's multimask outputs).")


class PromptSegmentResponse(ImageMeta):
    prompts: list[PromptMasks] = Field(
        description="One entry per prompt (boxes shorthand appended in order)."
    )


class RefinePoint(BaseModel):
    x: float
    y: float
    label: int = Field(description="1 foreground, 0 background.")


class RefineResponse(ImageMeta):
    mask: MaskOut = Field(
        description="Fine mask from the SAM decoder; empty (area 0, score 0) when the text wins no part of the "
        "image (the coarse mask is empty), rather than a mask grown from a point the text did not select."
    )
    coarse: MaskOut | None = Field(None, description="CLIP-head coarse mask (return_coarse=true).")
    points: list[RefinePoint] | None = Field(None, description="Sampled point prompts (return_points=true).")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"], description="loading | ready | failed | draining | stopped")
    reason: str = Field(examples=["ready"])


class InfoResponse(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    status: str
    status_reason: str
    model: str | None = Field(description="Architecture name from the bundle manifest.")
    bundle_path: str
    fingerprint: str | None
    random_init: bool | None = Field(description="True: RANDOM WEIGHTS, outputs are meaningless.")
    warning: str | None = Field(description="Loud warning when weights are random-init.")
    weights: dict[str, Any] | None = Field(description="Weights provenance from the manifest.")
    bundle: dict[str, Any] | None = Field(description="Bundle.info().")
    backend: dict[str, Any] | None = Field(description="Backend name, device, precision, details.")
    settings: dict[str, Any] = Field(description="Effective settings (secrets masked).")
    uptime_s: float
    load_seconds: float | None


def image_meta(entry: Any) -> dict[str, Any]:
    """The ImageMeta fields of a response about `entry`."""
    return {"image_id": entry.image_id, "width": entry.width, "height": entry.height, "cached": entry.cached}
