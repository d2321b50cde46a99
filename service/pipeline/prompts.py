"""Prompt models (pydantic, used by routes for validation and OpenAPI) and decoder-input construction.

Coordinates in requests are ORIGINAL-image pixels, [x, y], x along the width; a box is [x0, y0, x1, y1].
The decoder inputs are built exactly as segment_anything's SamPredictor / PromptEncoder would:
points first, then the box's two corners (labels 2 and 3); without a box one padding point (0, 0) with label
-1 is appended. Prompts whose token counts differ are grouped so every decoder call has a uniform N without
extra padding points (an extra -1 token would change SAM's output), hence results equal SamPredictor's.

Mask inputs (`mask_input`, per-request, and `mask_input_from`, per-prompt, which overrides it) are base64 of a
`.npy` float32 array of low-res logits, shape (4h, 4w) or (1, 4h, 4w) — what SamPredictor calls mask_input
(e.g. a previous response's low-res logits). They are loaded with allow_pickle=False.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import InvalidInput
from service.pipeline.transforms import map_coords

Box = tuple[float, float, float, float]


class Point(BaseModel):
    """A click in original-image pixels; label 1 = foreground, 0 = background."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
    x: float
    y: float
    label: Literal[0, 1] = 1


class PromptSpec(BaseModel):
    """One object to segment: any number of points and/or one box [x0, y0, x1, y1] (original px)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
    points: list[Point] = Field(default_factory=list)
    box: Box | None = None
    mask_input_from: str | None = Field(
        default=None,
        description="base64 .npy float32 low-res logits (4h, 4w) used as this prompt's mask prompt",
    )

    @model_validator(mode="after")
    def _needs_geometry(self) -> PromptSpec:
        if not self.points and self.box is None:
            raise ValueError("a prompt needs at least one point or a box")
        if self.box is not None and (self.box[2] < self.box[0] or self.box[3] < self.box[1]):
            raise ValueError("box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
        return self


class PromptRequest(BaseModel):
    """Prompt-segment request. `boxes` is shorthand: each box becomes its own prompt after `prompts`."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
    image_id: str | None = None
    prompts: list[PromptSpec] = Field(default_factory=list)
    boxes: list[Box] = Field(default_factory=list)
    multimask: bool = False
    mask_input: str | None = Field(
        default=None, description="base64 .npy float32 low-res logits (4h, 4w) applied to every prompt"
    )

    @model_validator(mode="after")
    def _not_empty(self) -> PromptRequest:
        if not self.prompts and not self.boxes:
            raise ValueError("give at least one prompt (prompts or boxes)")
        for box in self.boxes:
            if box[2] < box[0] or box[3] < box[1]:
                raise ValueError("box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
        return self

    def all_prompts(self) -> list[PromptSpec]:
        """prompts followed by one box-only prompt per entry of `boxes` (response order)."""
        return list(self.prompts) + [PromptSpec(box=box) for box in self.boxes]


@dataclass
class DecoderBatch:
    """One decoder call: K prompts with N tokens each. indices: positions of these prompts in the request.
    point_coords (K, N, 2) f32 INPUT frame; point_labels (K, N) f32; mask_input (K, 1, 4h, 4w) f32;
    has_mask_input (K,) f32."""

    indices: list[int]
    point_coords: np.ndarray
    point_labels: np.ndarray
    mask_input: np.ndarray
    has_mask_input: np.ndarray


def decode_mask_input(data: str, grid: int) -> np.ndarray:
    """base64 .npy -> (1, grid, grid) float32 logits; grid = 4h. Raises InvalidInput (422)."""
    try:
        raw = base64.b64decode(data, validate=True)
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"mask_input is not base64 of a .npy array: {exc}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise InvalidInput("mask_input must hold a numeric array")
    arr = arr.astype(np.float32).reshape(arr.shape[-2:] if arr.ndim == 3 and arr.shape[0] == 1 else arr.shape)
    if arr.shape != (grid, grid):
        raise InvalidInput(f"mask_input must have shape ({grid}, {grid}) (low-res logits), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInput("mask_input contains NaN or infinite values")
    return arr[None]


def validate_prompts(specs: list[PromptSpec], width: int, height: int, settings: Any) -> None:
    """Limits and in-image checks (0 <= x <= W, 0 <= y <= H). Raises InvalidInput (422)."""
    if not specs:
        raise InvalidInput("give at least one prompt")
    if len(specs) > settings.max_prompts:
        raise InvalidInput(f"{len(specs)} prompts; at most {settings.max_prompts} per request")
    for i, spec in enumerate(specs):
        if len(spec.points) > settings.max_points_per_prompt:
            raise InvalidInput(
                f"prompt {i}: {len(spec.points)} points; at most {settings.max_points_per_prompt}"
            )
        xs = [p.x for p in spec.points] + ([spec.box[0], spec.box[2]] if spec.box else [])
        ys = [p.y for p in spec.points] + ([spec.box[1], spec.box[3]] if spec.box else [])
        if any(not 0 <= x <= width for x in xs) or any(not 0 <= y <= height for y in ys):
            raise InvalidInput(f"prompt {i}: coordinates outside the {width}x{height} image")


def prompt_tokens(
    spec: PromptSpec, original_size: tuple[int, int], image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One prompt -> (coords (N, 2) f32 INPUT frame, labels (N,) f32), SamPredictor's token order."""
    coords = [[p.x, p.y] for p in spec.points]
    labels = [float(p.label) for p in spec.points]
    if spec.box is not None:
        coords += [[spec.box[0], spec.box[1]], [spec.box[2], spec.box[3]]]
        labels += [2.0, 3.0]
    mapped = map_coords(np.asarray(coords, dtype=np.float64).reshape(-1, 2), original_size, image_size)
    if spec.box is None:  # SAM's padding point, appended after mapping (its coordinates are ignored)
        mapped = np.concatenate([mapped, np.zeros((1, 2), np.float32)])
        labels.append(-1.0)
    return mapped, np.asarray(labels, dtype=np.float32)


def build_decoder_batches(
    specs: list[PromptSpec],
    original_size: tuple[int, int],
    image_size: int,
    mask_inputs: list[np.ndarray | None],
    grid: int,
) -> list[DecoderBatch]:
    """Group prompts by token count. mask_inputs[i]: (1, grid, grid) f32 or None; grid = 4h."""
    groups: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for i, spec in enumerate(specs):
        coords, labels = prompt_tokens(spec, original_size, image_size)
        groups.setdefault(len(labels), []).append((i, coords, labels))
    batches = []
    for _, members in sorted(groups.items()):
        idx = [m[0] for m in members]
        masks = np.zeros((len(idx), 1, grid, grid), dtype=np.float32)
        has = np.zeros((len(idx),), dtype=np.float32)
        for row, i in enumerate(idx):
            if mask_inputs[i] is not None:
                masks[row] = mask_inputs[i]
                has[row] = 1.0
        batches.append(
            DecoderBatch(
                indices=idx,
                point_coords=np.stack([m[1] for m in members]).astype(np.float32),
                point_labels=np.stack([m[2] for m in members]).astype(np.float32),
                mask_input=masks,
                has_mask_input=has,
            )
        )
    return batches
