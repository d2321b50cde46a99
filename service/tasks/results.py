"""Result types of the tasks (service/tasks/*), rendered by service/render.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.images.runs import MaskRuns


@dataclass
class LabelScore:
    """One zero-shot label: softmax probability over the requested labels and the scaled cosine logit."""

    label: str
    probability: float
    logit: float


class _Bitmap:
    """The `mask` field of MaskResult: the (H, W) bool array given, or else decoded from `runs` on first read
    (a dataclass field whose default is this descriptor; reads on the class give the default, None)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> np.ndarray | None:
        if obj is None:
            return None
        value = obj.__dict__.get(self.slot)
        if value is None and obj.runs is not None:
            value = obj.__dict__[self.slot] = obj.runs.decode()
        return value

    def __set__(self, obj: Any, value: np.ndarray | None) -> None:
        obj.__dict__[self.slot] = value


@dataclass
class MaskResult:
    """mask: (H, W) bool at ORIGINAL image size (C or Fortran order). runs: the same mask as COCO RLE counts
    (service/images/runs.py) when the task made it that way: then `mask` is decoded only when read, and the
    renderers take RLE, area and bbox from the runs. score: predicted IoU for SAM masks, mean text probability
    inside the mask for text masks. low_res_logits: (4h, 4w) float32 decoder logits over the padded S x S
    input frame (usable as a later mask_input), or None."""

    mask: np.ndarray | None = _Bitmap()  # type: ignore[assignment]
    score: float = 0.0
    iou_prediction: float | None = None
    label: str | None = None
    low_res_logits: np.ndarray | None = None
    runs: MaskRuns | None = None

    def __post_init__(self) -> None:
        if self.__dict__.get("_mask") is None and self.runs is None:
            raise ValueError("a MaskResult needs its mask or its runs")

    @classmethod
    def holding(cls, mask: np.ndarray | MaskRuns, **fields: Any) -> MaskResult:
        """A result holding `mask` as given: a bitmap as `mask`, runs as `runs`; `fields`: the others."""
        held = {"runs": mask} if isinstance(mask, MaskRuns) else {"mask": mask}
        return cls(**held, **fields)

    def held(self) -> dict[str, Any]:
        """The mask as held: {"mask": array or None, "runs": MaskRuns or None} (to pass on without decoding)."""
        return {"mask": self.__dict__.get("_mask"), "runs": self.runs}


@dataclass
class RefineResult:
    """mask: the SAM-refined mask; coarse: the CLIP-head text mask it started from; points: the sampled
    prompts as (x, y, label) in ORIGINAL pixels (label 1 positive, 0 negative)."""

    mask: MaskResult
    coarse: MaskResult
    points: list[tuple[float, float, int]]
