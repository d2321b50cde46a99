"""SAM prompt sampling and batched decoding used by teacher training, SAM self-distillation and evaluation.

Coordinates are pixels [x, y] in the padded model input frame (0..S), like SamPredictor after its transform.
Masks: (K, S, S) bool at input resolution; low-res targets are (K, 4h, 4w) float in [0, 1] (area-downsampled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PROMPT_KINDS = ("box", "point", "point_mask")


@dataclass
class Prompts:
    """K prompts of one kind. boxes (K, 4) xyxy | None; points (coords (K, N, 2), labels (K, N)) | None;
    mask_input (K, 1, 4h, 4w) logits | None."""

    kind: str
    boxes: torch.Tensor | None = None
    points: tuple[torch.Tensor, torch.Tensor] | None = None
    mask_input: torch.Tensor | None = None


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool -> (K, 4) float [x0, y0, x1, y1] tight boxes (inclusive pixel extents)."""
    ys = masks.any(2)
    xs = masks.any(1)
    ar_y = torch.arange(masks.shape[1], device=masks.device)
    ar_x = torch.arange(masks.shape[2], device=masks.device)
    big = 10**6
    y0 = torch.where(ys, ar_y, big).amin(1)
    y1 = torch.where(ys, ar_y, -1).amax(1)
    x0 = torch.where(xs, ar_x, big).amin(1)
    x1 = torch.where(xs, ar_x, -1).amax(1)
    return torch.stack([x0, y0, x1, y1], 1).float()


def random_points(masks: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n uniformly random pixels inside each mask: (K, H, W) bool -> (K, n, 2) float [x, y]."""
    k, h, w = masks.shape
    probs = masks.flatten(1).float() + 1e-12
    idx = torch.multinomial(probs, n, replacement=True, generator=gen)
    return torch.stack([idx % w, idx // w], -1).float()


def coarse_mask_logits(masks: torch.Tensor, grid: int, scale: torch.Tensor) -> torch.Tensor:
    """A coarse mask prompt like the CLIP head gives: (K, S, S) bool -> averaged on a grid×grid patch grid,
    upsampled (bilinear) to 4·grid, mapped to logits (2p - 1) * scale; (K, 1, 4grid, 4grid)."""
    patch = F.adaptive_avg_pool2d(masks[:, None].float(), grid)
    up = F.interpolate(patch, size=(4 * grid, 4 * grid), mode="bilinear", align_corners=False)
    return (2 * up - 1) * scale.view(-1, 1, 1, 1)


def sample_prompts(masks: torch.Tensor, kind: str, grid: int, gen: torch.Generator) -> Prompts:
    """Prompts for (K, S, S) bool masks: jittered boxes, 1 positive point, or 2 points + coarse mask."""
    k, s, _ = masks.shape
    if kind == "box":
        box = mask_boxes(masks)
        wh = (box[:, 2:] - box[:, :2]).repeat(1, 2)
        noise = torch.randn(k, 4, generator=gen) * 0.05 * wh
        return Prompts(kind, boxes=(box + noise.clamp(-0.1 * s, 0.1 * s)).clamp(0, s - 1))
    n = 1 if kind == "point" else 2
    coords = random_points(masks, n, gen)
    labels = torch.ones(k, n)
    if kind == "point":
        return Prompts(kind, points=(coords, labels))
    scale = torch.empty(k).uniform_(2.0, 20.0, generator=gen)
    return Prompts(kind, points=(coords, labels), mask_input=coarse_mask_logits(masks, grid, scale))


def decode_all(
    sam: torch.nn.Module, emb: torch.Tensor, prompts: Prompts
) -> tuple[torch.Tensor, torch.Tensor]:
    """All four decoder outputs for one image: emb (1, C, h, w) -> logits (K, 4, 4h, 4w), iou (K, 4).

    `sam` has .prompt_encoder and .mask_decoder (a SamClip or a SamTeacher)."""
    sparse, dense = sam.prompt_encoder(points=prompts.points, boxes=prompts.boxes, masks=prompts.mask_input)
    return sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)


def lowres_targets(masks: torch.Tensor, size: int) -> torch.Tensor:
    """(K, S, S) bool -> (K, size, size) float in [0, 1] (area interpolation)."""
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="area")[:, 0]


def batch_prompts(
    masks: torch.Tensor, valid: torch.Tensor, grid: int, gen: torch.Generator
) -> list[tuple[int, Prompts, torch.Tensor]]:
    """Per image b of a batch (B, M, S, S) masks with valid (B, M): (b, prompts, its (K, S, S) masks)."""
    out = []
    for b in range(masks.shape[0]):
        m = masks[b][valid[b]]
        if m.shape[0] == 0:
            continue
        kind = PROMPT_KINDS[int(torch.randint(0, len(PROMPT_KINDS), (1,), generator=gen))]
        out.append((b, sample_prompts(m, kind, grid, gen), m))
    return out
