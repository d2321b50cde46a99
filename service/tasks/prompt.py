"""Prompt-segment: SAM point / box / mask prompts -> decoder calls on the cached embedding -> masks.

Coordinates in requests are ORIGINAL-image pixels, [x, y], x along the width; a box is [x0, y0, x1, y1]
(corners in any order: they are sorted). Points outside the image are allowed, as in SamPredictor.
The decoder inputs are built exactly as segment_anything's SamPredictor / PromptEncoder would:
points first, then the box's two corners (labels 2 and 3); without a box one padding point (0, 0) with label
-1 is appended. Prompts whose token counts differ are grouped so every decoder call has a uniform N without
extra padding points (an extra -1 token would change SAM's output), hence results equal SamPredictor's; all
prompts of one group go through the decoder in ONE call (K prompts).

Mask prompts (`mask_input`) are base64 of a `.npy` float32 array of low-res logits, shape (4h, 4w) or
(1, 4h, 4w) — what SamPredictor calls mask_input, e.g. a previous response's `low_res_logits`
(`return_logits=true`). They are loaded with allow_pickle=False.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidInput
from service.images.entry import ImageEntry
from service.images.transforms import map_coords
from service.tasks.heads import Heads
from service.tasks.results import MaskResult
from service.timing import Timings

Box = tuple[float, float, float, float]
MAX_PROMPTS_PER_CALL = 64
"""Most prompts in one decoder call (as SamAutomaticMaskGenerator's points_per_batch)."""


@dataclass(frozen=True)
class Prompt:
    """One object to segment (ORIGINAL px): points as (x, y, label) with label 1 = foreground, 0 = background;
    an optional box; an optional mask prompt (base64 .npy low-res logits)."""

    points: tuple[tuple[float, float, int], ...] = ()
    box: Box | None = None
    mask_input: str | None = None


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


def encode_mask_logits(logits: np.ndarray) -> str:
    """(4h, 4w) low-res logits -> base64 of a float32 `.npy` (the `mask_input` format; inverse below)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(logits, np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


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


def prompt_tokens(
    spec: Prompt, original_size: tuple[int, int], image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One prompt -> (coords (N, 2) f32 INPUT frame, labels (N,) f32), SamPredictor's token order."""
    coords = [[x, y] for x, y, _ in spec.points]
    labels = [float(label) for _, _, label in spec.points]
    if spec.box is not None:
        x0, y0, x1, y1 = spec.box
        coords += [[min(x0, x1), min(y0, y1)], [max(x0, x1), max(y0, y1)]]
        labels += [2.0, 3.0]
    mapped = map_coords(np.asarray(coords, dtype=np.float64).reshape(-1, 2), original_size, image_size)
    if spec.box is None:  # SAM's padding point, appended after mapping (its coordinates are ignored)
        mapped = np.concatenate([mapped, np.zeros((1, 2), np.float32)])
        labels.append(-1.0)
    return mapped, np.asarray(labels, dtype=np.float32)


def build_decoder_batches(
    specs: list[Prompt],
    original_size: tuple[int, int],
    image_size: int,
    mask_inputs: list[np.ndarray | None],
    grid: int,
    max_prompts: int = MAX_PROMPTS_PER_CALL,
) -> list[DecoderBatch]:
    """Group prompts by token count, at most `max_prompts` per decoder call (bounds the call's memory: each
    prompt carries its own copy of the image tokens through the two-way transformer).
    mask_inputs[i]: (1, grid, grid) f32 or None; grid = 4h."""
    groups: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for i, spec in enumerate(specs):
        coords, labels = prompt_tokens(spec, original_size, image_size)
        groups.setdefault(len(labels), []).append((i, coords, labels))
    chunks = [
        ms[k : k + max_prompts] for _, ms in sorted(groups.items()) for k in range(0, len(ms), max_prompts)
    ]
    batches = []
    for members in chunks:
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


def segment_prompts(
    heads: Heads, entry: ImageEntry, prompts: list[Prompt], multimask: bool, timings: Timings
) -> list[list[MaskResult]]:
    """One list of masks per prompt, in request order: SAM's single-mask output (1 mask), or its 3 multimask
    outputs when `multimask`; each with its predicted IoU and low-res logits."""
    grid = heads.mask_grid
    masks = [None if p.mask_input is None else decode_mask_input(p.mask_input, grid) for p in prompts]
    select = [1, 2, 3] if multimask else [0]
    results: list[list[MaskResult]] = [[] for _ in prompts]
    for batch in build_decoder_batches(prompts, entry.original_size, heads.image_size, masks, grid):
        out = heads.decode(
            entry, batch.point_coords, batch.point_labels, batch.mask_input, batch.has_mask_input, timings
        )
        for row, i in enumerate(batch.indices):
            results[i] = heads.masks(
                entry, out.low_res_masks[row, select], out.iou_predictions[row, select], timings
            )
    return results
