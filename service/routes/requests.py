"""Request models: ONE pydantic model per endpoint, built from the settings' limits, so that /openapi.json states
exactly what the server accepts (required fields, lengths, ranges) and the same model validates the request.

Where each field travels (`service/routes/inputs.py` fills the model; `openapi.py` documents it):
- the image: a raw `image/*` body, multipart field `image`, or `image_id` in a JSON body;
- `QUERY` fields: the query string (`?text=dog&text=cat`, `?labels=a&labels=b`, `?top_k=3`, ...);
- `BODY` fields (/segment/prompt only): the prompts, in the JSON body or in multipart field `prompts` (JSON).
A field that is in both (`multimask`) is taken from the query when given there.

Texts and labels are 1..max_text_chars characters without leading/trailing white space and unique within a
request. Coordinates are ORIGINAL-image pixels within +-COORD_LIMIT (points outside the image are allowed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from service.images.source import ImageSource
from service.tasks.prompt import Prompt

IMAGE_ID_PATTERN = r"^[0-9a-f]{64}$"
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
"""ECMAScript's and Unicode's white space, written out so JSON Schema and Python agree on it exactly."""
TEXT_PATTERN = rf"^[^{WHITE_SPACE}](?:[\s\S]*[^{WHITE_SPACE}])?$"
COORD_LIMIT = 1_000_000.0
SEED_MAX = 2**32 - 1
ImageId = Annotated[
    str, StringConstraints(pattern=IMAGE_ID_PATTERN), Field(description="sha256 hex of the image bytes.")
]
MaskFormat = Literal["rle", "polygon", "png"]
Coord = Annotated[float, Field(ge=-COORD_LIMIT, le=COORD_LIMIT)]
MASK_LOGITS_FORMAT = "samclip-mask-logits"
"""JSON Schema `format` of a mask prompt: base64 of a float32 `.npy` array of low-res logits (4h, 4w), e.g. a
previous response's `low_res_logits`."""
MaskLogits = Annotated[
    str,
    WithJsonSchema(
        {"type": "string", "format": MASK_LOGITS_FORMAT, "contentEncoding": "base64",
         "description": "base64 of a float32 .npy array (4h, 4w) of low-res mask logits"}
    ),
]  # fmt: skip


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("values must be unique")
    return values


def _unique_or_none(values: list[str] | None) -> list[str] | None:
    return None if values is None else _unique(values)


class ImageRequest(BaseModel):
    """Base of every inference request: the image source is attached by the filler (not a field)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, regex_engine="python-re")
    QUERY: ClassVar[tuple[str, ...]] = ()
    BODY: ClassVar[tuple[str, ...]] = ()
    RAW_BODY: ClassVar[bool] = True

    image_id: ImageId | None = None
    _source: ImageSource | None = PrivateAttr(None)
    _format: str = PrivateAttr("rle")

    @property
    def source(self) -> ImageSource:
        assert self._source is not None, "filled by service.routes.inputs"
        return self._source

    @property
    def output(self) -> str:
        """The negotiated mask format: rle | polygon | png (explicit `format`, else the Accept header)."""
        return self._format


class Point(BaseModel):
    """A click in original-image pixels; label 1 = foreground, 0 = background."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    x: Coord
    y: Coord
    label: Literal[0, 1] = 1


Box = tuple[Coord, Coord, Coord, Coord]


_ANY_OF_POINTS_BOX: dict[str, Any] = {"anyOf": [
    {"required": ["points"], "properties": {"points": {"minItems": 1}}},
    {"required": ["box"], "properties": {"box": {"type": "array"}}},
]}  # fmt: skip
_ANY_OF_PROMPTS_BOXES: dict[str, Any] = {"anyOf": [
    {"required": ["prompts"], "properties": {"prompts": {"minItems": 1}}},
    {"required": ["boxes"], "properties": {"boxes": {"minItems": 1}}},
]}  # fmt: skip


@dataclass(frozen=True)
class RequestModels:
    """The request model of every endpoint for one Settings."""

    embed: type[ImageRequest]
    classify: type[ImageRequest]
    segment: type[ImageRequest]
    prompt: type[ImageRequest]
    refine: type[ImageRequest]
    everything: type[ImageRequest]


@dataclass(frozen=True)
class Kit:
    """What every endpoint's model is built from: the settings, the Text type with their length limit, a
    factory for unique text lists, and the Output base (format, index)."""

    settings: Any
    text: Any
    output: type[ImageRequest]

    def texts(self, limit: int, what: str) -> Any:
        return Field(min_length=1, max_length=limit, description=f"1..{limit} unique {what} (repeat the parameter).",
                     json_schema_extra={"uniqueItems": True})  # fmt: skip


def build_request_models(settings: Any) -> RequestModels:
    """Request models whose limits are `settings`' (max_labels, max_texts, max_text_chars, max_prompts, ...)."""
    text = Annotated[
        str,
        StringConstraints(min_length=1, max_length=settings.max_text_chars, pattern=TEXT_PATTERN),
        Field(description=f"1..{settings.max_text_chars} characters, no leading/trailing white space."),
    ]

    class Output(ImageRequest):
        format: MaskFormat | None = Field(
            None, description="rle (default) or polygon in JSON, or png (ONE mask, chosen by `index`); "
            "when absent, `Accept: image/png` selects png (q-values honoured)."
        )  # fmt: skip
        index: int = Field(
            0, ge=0, le=10_000, description="format=png: which mask of the response (0-based)."
        )

    class EmbedRequest(ImageRequest):
        """POST /embed: the image only."""

    kit = Kit(settings, text, Output)
    return RequestModels(
        EmbedRequest, _classify(kit), _segment(kit), _prompt(kit), _refine(kit), _everything(kit)
    )


def _classify(kit: Kit) -> type[ImageRequest]:
    limit = kit.settings.max_labels

    class ClassifyRequest(ImageRequest):
        QUERY = ("labels", "top_k")
        labels: Annotated[list[kit.text], kit.texts(limit, "candidate labels"), AfterValidator(_unique)]  # type: ignore[name-defined]
        top_k: int | None = Field(None, ge=1, le=limit, description="Only the best k labels.")

    return ClassifyRequest


def _segment(kit: Kit) -> type[ImageRequest]:
    s = kit.settings

    class SegmentRequest(kit.output):  # type: ignore[name-defined]
        QUERY = ("text", "instances", "min_area", "max_instances", "format", "index")
        text: Annotated[list[kit.text], kit.texts(s.max_texts, "texts"), AfterValidator(_unique)]  # type: ignore[name-defined]
        instances: bool = Field(
            False,
            description="One mask per object: each connected part of a text's mask becomes a SAM box prompt.",
        )
        min_area: int = Field(
            min(s.instance_min_area, s.max_image_pixels), ge=0, le=s.max_image_pixels,
            description="instances=true: smallest text-mask part (pixels) that becomes an instance.",
        )  # fmt: skip
        max_instances: int = Field(
            s.max_instances, ge=1, le=s.max_instances,
            description="instances=true: most instances per text (the largest parts).",
        )  # fmt: skip

    return SegmentRequest


def _refine(kit: Kit) -> type[ImageRequest]:
    s = kit.settings

    class RefineRequest(kit.output):  # type: ignore[name-defined]
        QUERY = ("text", "num_points", "seed", "return_coarse", "return_points", "return_logits", "format",
                 "index")  # fmt: skip
        text: kit.text  # type: ignore[name-defined]
        num_points: int = Field(
            s.refine_points, ge=1, le=s.max_points_per_prompt, description="Points to sample."
        )
        seed: int = Field(s.refine_seed, ge=0, le=SEED_MAX, description="Point-sampling seed.")
        return_coarse: bool = Field(False, description="Also return the CLIP-head coarse mask.")
        return_points: bool = Field(False, description="Also return the sampled points (original px).")
        return_logits: bool = Field(False, description="Also return each mask's low-res logits (mask_input).")

    return RefineRequest


def _prompt(kit: Kit) -> type[ImageRequest]:
    s = kit.settings

    class PromptSpec(BaseModel):
        """One object: points and/or a box [x0, y0, x1, y1] (original px), optionally a mask prompt."""

        model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=_ANY_OF_POINTS_BOX)
        points: list[Point] = Field(default_factory=list, max_length=s.max_points_per_prompt)
        box: Box | None = None
        mask_input_from: MaskLogits | None = Field(
            None, description="This prompt's mask prompt (overrides mask_input)."
        )

        @model_validator(mode="after")
        def _geometry(self) -> PromptSpec:
            if not self.points and self.box is None:
                raise ValueError("a prompt needs at least one point or a box")
            return self

    class PromptRequest(kit.output):  # type: ignore[name-defined]
        model_config = ConfigDict(json_schema_extra=_ANY_OF_PROMPTS_BOXES)
        QUERY = ("multimask", "return_logits", "format", "index")
        BODY = ("prompts", "boxes", "multimask", "mask_input")
        RAW_BODY = False
        prompts: list[PromptSpec] = Field(default_factory=list, max_length=s.max_prompts)
        boxes: list[Box] = Field(default_factory=list, max_length=s.max_prompts,
                                 description="Shorthand: each box becomes its own prompt, after `prompts`.")  # fmt: skip
        multimask: bool = Field(
            False, description="3 masks per prompt (SAM's multimask outputs) instead of 1."
        )
        mask_input: MaskLogits | None = Field(None, description="Mask prompt for every prompt.")
        return_logits: bool = Field(False, description="Also return each mask's low-res logits (mask_input).")

        @model_validator(mode="after")
        def _not_empty(self) -> PromptRequest:
            if not self.prompts and not self.boxes:
                raise ValueError("give at least one prompt (prompts or boxes)")
            return self

        def all_prompts(self) -> list[Prompt]:
            """prompts, then one box prompt per entry of `boxes` (response order)."""
            out = [Prompt(tuple((p.x, p.y, p.label) for p in s.points), s.box, s.mask_input_from or self.mask_input)
                   for s in self.prompts]  # fmt: skip
            return out + [Prompt((), box, self.mask_input) for box in self.boxes]

    return PromptRequest


def _everything(kit: Kit) -> type[ImageRequest]:
    """POST /segment/everything: SamAutomaticMaskGenerator's knobs, bounded by the settings; labels."""
    settings, output, text = kit.settings, kit.output, kit.text
    side, masks = settings.max_points_per_side, settings.max_everything_masks

    def unit(default: float, what: str) -> Any:
        return Field(default, ge=0.0, le=1.0, description=what)

    class EverythingRequest(output):  # type: ignore[valid-type,misc]
        QUERY = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                 "max_masks", "labels", "format", "index")  # fmt: skip
        points_per_side: int = Field(
            min(settings.everything_points_per_side, side), ge=1, le=side,
            description="Point grid side: n x n single-point prompts over the image.",
        )  # fmt: skip
        pred_iou_thresh: float = unit(0.88, "Keep masks whose predicted IoU is above this (0: no filter).")
        stability_score_thresh: float = unit(0.95, "Keep masks at least this stable (0: no filter).")
        box_nms_thresh: float = unit(0.7, "Drop a mask whose box IoU with a better mask's box is above this.")
        max_masks: int = Field(
            min(100, masks), ge=1, le=masks, description="Most masks returned (best first)."
        )
        labels: Annotated[
            list[text] | None,  # type: ignore[valid-type]
            Field(max_length=settings.max_labels, json_schema_extra={"uniqueItems": True},
                  description=f"0..{settings.max_labels} unique candidate labels (repeat the parameter); "
                  "every mask gets the best one from the CLIP head's features pooled inside it."),
            AfterValidator(_unique_or_none),
        ] = None  # fmt: skip

    return EverythingRequest
