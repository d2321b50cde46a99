"""Losses for SAM-CLIP merging and for training the demo teachers.

Conventions: embeddings are L2-normalised float tensors; mask logits are (K, M, H, W) float (K prompts,
M masks per prompt); binary targets are {0, 1} floats of the same shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cos) between (B, D) student and teacher embeddings (the seed's CLIP distillation)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def dense_distill_loss(dense: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean (1 - cos) between (B, h, w, D) patch embeddings and per-patch targets; weight (B, h, w)."""
    cos = F.cosine_similarity(dense.float(), target.float(), dim=-1)
    return ((1.0 - cos) * weight).sum() / weight.sum().clamp_min(1e-6)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask soft dice loss over the last two axes; target in [0, 1]; returns logits.shape[:-2]."""
    p = logits.float().sigmoid().flatten(-2)
    t = target.float().flatten(-2)
    return 1.0 - (2 * (p * t).sum(-1) + 1.0) / (p.sum(-1) + t.sum(-1) + 1.0)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE (soft targets allowed) + dice per mask; returns logits.shape[:-2]."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").mean((-2, -1))
    return bce + dice_loss(logits, target)


def sam_distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_iou: torch.Tensor,
    teacher_iou: torch.Tensor,
) -> torch.Tensor:
    """SAM self-distillation: student masks vs the frozen teacher's masks for the same prompts.

    Logits (K, M, H, W): per-pixel binary KL(teacher || student) (BCE against sigmoid(teacher) minus the
    teacher's entropy, so 0 when they agree) + soft dice; plus MSE between IoU predictions (K, M).
    """
    s, t = student_logits.float(), teacher_logits.float()
    p = t.sigmoid()
    kl = F.binary_cross_entropy_with_logits(s, p) - F.binary_cross_entropy_with_logits(t, p)
    return kl + dice_loss(s, p).mean() + F.mse_loss(student_iou.float(), teacher_iou.float())


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with binary target over the last two axes."""
    p = logits > 0
    t = target > 0.5
    inter = (p & t).flatten(-2).sum(-1).float()
    union = (p | t).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def sam_supervised_loss(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Ground-truth loss for training a SAM teacher: logits (K, 4, H, W) = all decoder outputs (index 0 the
    single-mask output, 1..3 multimask), iou_pred (K, 4), gt (K, H, W) binary.

    Like SAM: the single output is trained on the target, the multimask outputs by their best (ambiguity);
    IoU predictions regress the actual IoUs of all four outputs.
    """
    target = gt[:, None].expand_as(logits).float()
    per = mask_loss(logits, target)
    loss = per[:, 0].mean() + per[:, 1:].min(dim=1).values.mean()
    with torch.no_grad():
        actual = mask_iou(logits, target)
    return loss + F.mse_loss(iou_pred.float(), actual)


def contrastive_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    pos: torch.Tensor,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE for (B, D) images and (T, D) texts; pos (B, T) bool says which texts
    truly describe which images (every image needs one). Texts without a positive image only act as negatives.
    ignore (B, T) bool: pairs left out of both softmaxes (neither positive nor negative)."""
    logits = scale * image.float() @ text.float().t()
    if ignore is not None:
        logits = logits.masked_fill(ignore & ~pos, -1e4)  # exp(-1e4 - max) == 0
    p = pos.float()
    li = torch.sum(-(p / p.sum(1, keepdim=True)) * F.log_softmax(logits, 1), 1).mean()
    has = p.sum(0) > 0
    pt = p.t()[has]
    lt = torch.sum(-(pt / pt.sum(1, keepdim=True)) * F.log_softmax(logits.t()[has], 1), 1).mean()
    return (li + lt) / 2


def background_calibration_loss(
    sims: torch.Tensor,
    target: torch.Tensor,
    background_index: int,
    margin: float = 0.05,
    own_margin: float | None = None,
    background_cap: float | None = None,
) -> torch.Tensor:
    """Hinge loss making the "background" text an "other / none" class for CLIP-teacher training.

    sims (B, T) cosine similarities of images to the T class texts (one of which is background); target (B,)
    each image's class (`background_index` for object-free images). For object images:
    sim(own) > sim(bg) + own_margin (default: margin) and sim(bg) > max sim(other objects) + margin. For
    background images, with `background_cap`: margin <= sim(bg) - sim(class) <= background_cap for every object
    class, so the text-vs-"background" margins of objects and of backgrounds are alike: mixing an object's and
    the background's embedding then crosses the decision at an even mix (the dense targets' boundary patches).
    Without it, background images add nothing (InfoNCE covers them).
    """
    obj = target != background_index
    own_margin = margin if own_margin is None else own_margin
    loss = sims.sum() * 0
    if obj.any():
        s, t = sims[obj], target[obj]
        own = s.gather(1, t[:, None])[:, 0]
        bg = s[:, background_index]
        other = s.clone()
        other.scatter_(1, t[:, None], -2.0)
        other[:, background_index] = -2.0
        loss = loss + (F.relu(bg + own_margin - own) + F.relu(other.max(1).values + margin - bg)).mean()
    if background_cap is not None and (~obj).any():
        s = sims[~obj]
        gap = s[:, background_index : background_index + 1] - torch.cat(
            [s[:, :background_index], s[:, background_index + 1 :]], dim=1
        )
        loss = loss + (F.relu(gap - background_cap) + F.relu(margin - gap)).mean()
    return loss
