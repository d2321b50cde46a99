"""Typed results of every call, built from the server's JSON.

Coordinates are original-image pixels: x right, y down, origin at the top-left corner of the top-left pixel.
Every mask is carried as COCO RLE (`segmentation`: {"size": [H, W], "counts": str}, column-major, compressed
as pycocotools writes it) and decoded on first use into `Mask.mask`: a (H, W) bool numpy array at the original
image size. `bbox` is COCO [x, y, width, height]; `area` the number of mask pixels.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

_MASK_KEYS = ("segmentation", "bbox", "area", "score", "label", "iou_prediction", "stability_score", "point",
              "label_score", "instance", "text_score", "low_res_logits")  # fmt: skip


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE {"size": [H, W], "counts": str | bytes} -> (H, W) bool."""
    counts = rle["counts"]
    coco = {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return mask_utils.decode(coco).astype(bool)


def decode_logits(text: str) -> np.ndarray:
    """base64 of a float32 .npy (4h, 4w) (a mask's `low_res_logits`) -> the array (never unpickles)."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def encode_logits(logits: np.ndarray) -> str:
    """(4h, 4w) float array -> base64 of a float32 .npy: what `mask_input` takes."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(logits, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Mask:
    """One mask. score: text probability (segment), predicted IoU (prompt, refine, everything, instances).
    Optional keys, by endpoint: label (segment/refine/instances/everything with labels), iou_prediction
    (prompt/refine), stability_score, point [x, y] (the grid point), label_score (everything),
    instance (index within its text), text_score (instances), low_res_logits (with return_logits).
    Keys the client does not know yet land in `extra`."""

    segmentation: dict[str, Any]
    bbox: list[int]
    area: int
    score: float
    label: str | None = None
    iou_prediction: float | None = None
    stability_score: float | None = None
    point: list[float] | None = None
    label_score: float | None = None
    instance: int | None = None
    text_score: float | None = None
    low_res_logits: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mask:
        known = {k: data[k] for k in _MASK_KEYS if k in data}
        return cls(**known, extra={k: v for k, v in data.items() if k not in _MASK_KEYS})

    @cached_property
    def mask(self) -> np.ndarray:
        """(H, W) bool at the original image size (decoded from the RLE once)."""
        if not isinstance(self.segmentation, dict):
            raise ValueError("this mask came as polygons; the client asks for RLE")
        return decode_rle(self.segmentation)

    @property
    def logits(self) -> np.ndarray | None:
        """(4h, 4w) float32 low-res decoder logits (with return_logits=True), usable as `mask_input`."""
        return None if self.low_res_logits is None else decode_logits(self.low_res_logits)


def stack(masks: list[Mask], height: int, width: int) -> np.ndarray:
    """(N, H, W) bool array of `masks` ((0, H, W) when there are none)."""
    if not masks:
        return np.zeros((0, height, width), bool)
    return np.stack([m.mask for m in masks])


@dataclass
class ImageInfo:
    """What every image response says. image_id: sha256 hex of the uploaded bytes; width, height: original
    size after EXIF orientation; cached: the embedding came from a cache (no encoder run)."""

    image_id: str
    width: int
    height: int
    cached: bool

    @classmethod
    def _meta(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {f.name: data[f.name] for f in fields(ImageInfo)}


@dataclass
class EmbedResult(ImageInfo):
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbedResult:
        return cls(**cls._meta(data))


@dataclass
class LabelScore:
    label: str
    probability: float
    logit: float


@dataclass
class ClassifyResult(ImageInfo):
    """labels: ranked by probability (softmax over the labels sent), best first."""

    labels: list[LabelScore] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassifyResult:
        labels = [LabelScore(x["label"], x["probability"], x["logit"]) for x in data["labels"]]
        return cls(**cls._meta(data), labels=labels)

    @property
    def top(self) -> str:
        return self.labels[0].label


@dataclass
class MasksResult(ImageInfo):
    """segment: one mask per text, in request order; instances: one mask per object, ordered by text then
    score; everything: masks by predicted IoU, best first (`labels`: the labels used, or None)."""

    masks: list[Mask] = field(default_factory=list)
    background_prompts: list[str] | None = None
    labels: list[str] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MasksResult:
        masks = [Mask.from_json(m) for m in data["masks"]]
        return cls(**cls._meta(data), masks=masks, background_prompts=data.get("background_prompts"),
                   labels=data.get("labels"))  # fmt: skip

    def array(self) -> np.ndarray:
        """(N, H, W) bool of all masks."""
        return stack(self.masks, self.height, self.width)


@dataclass
class PromptResult(ImageInfo):
    """prompts[i]: the masks of prompt i (1, or 3 with multimask); prompts first, then one per box."""

    prompts: list[list[Mask]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PromptResult:
        prompts = [[Mask.from_json(m) for m in p["masks"]] for p in data["prompts"]]
        return cls(**cls._meta(data), prompts=prompts)

    @property
    def masks(self) -> list[Mask]:
        """All masks, prompt-major."""
        return [m for group in self.prompts for m in group]


@dataclass
class RefineResult(ImageInfo):
    """mask: the fine SAM mask; coarse: the CLIP-head mask (return_coarse); points: sampled (x, y, label)."""

    mask: Mask | None = None
    coarse: Mask | None = None
    points: list[tuple[float, float, int]] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RefineResult:
        coarse = data.get("coarse")
        points = data.get("points")
        return cls(
            **cls._meta(data),
            mask=Mask.from_json(data["mask"]),
            coarse=None if coarse is None else Mask.from_json(coarse),
            points=None if points is None else [(p["x"], p["y"], p["label"]) for p in points],
        )
