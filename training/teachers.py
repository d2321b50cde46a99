"""Teachers for SAM-CLIP merging (seed appendix A).

- CLIP teacher: any OpenCLIP model. Its image tower gives distillation targets; its text tower is frozen and
  copied into SAM-CLIP's ``text_encoder`` (same key layout as open_clip) together with ``logit_scale``.
- SAM teacher: a frozen copy of the original SAM's image encoder, prompt encoder and mask decoder (our
  modules), used for SAM self-distillation in stage 2.
"""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from training.config import TeacherConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients; returns `module`."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class ClipTeacher(nn.Module):
    """Frozen OpenCLIP model. encode_image: (B, 3, r, r) uint8 RGB -> (B, D) L2-normalised (resized to the
    teacher's own input size and normalised with its own mean/std)."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.model = freeze(model)
        self.image_size = image_size
        mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
        std = getattr(model.visual, "image_std", None) or OPENAI_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
            )
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(ids).float(), dim=-1)


def create_open_clip(cfg: TeacherConfig) -> nn.Module:
    """open_clip.create_model(cfg.clip_model, pretrained=cfg.clip_pretrained or None), registering
    cfg.clip_model_config first when given (custom architectures such as the demo's tiny CLIP)."""
    if cfg.clip_model_config:
        open_clip.add_model_config(Path(cfg.clip_model_config))
    return open_clip.create_model(cfg.clip_model, pretrained=cfg.clip_pretrained or None)


def load_clip_teacher(cfg: TeacherConfig) -> ClipTeacher:
    return ClipTeacher(create_open_clip(cfg), cfg.clip_image_size)


def text_tower_state(clip_model: nn.Module) -> dict[str, torch.Tensor]:
    """open_clip text-tower tensors with our ``text_encoder`` key names (image tower and logit params dropped)."""
    keep = ("token_embedding", "positional_embedding", "transformer.", "ln_final", "text_projection")
    return {k: v for k, v in clip_model.state_dict().items() if k.startswith(keep)}


def copy_text_tower(clip_model: nn.Module, samclip: nn.Module) -> None:
    """Copy the CLIP teacher's text tower and logit scale into `samclip` (strict: names and shapes must fit)."""
    samclip.text_encoder.load_state_dict(text_tower_state(clip_model), strict=True)
    with torch.no_grad():
        samclip.logit_scale.copy_(clip_model.logit_scale.detach().reshape(samclip.logit_scale.shape))


class SamTeacher(nn.Module):
    """Frozen copy of a SAM (image_encoder, prompt_encoder, mask_decoder) taken from a SamClip model."""

    def __init__(self, samclip: nn.Module) -> None:
        super().__init__()
        for part in SAM_PARTS:
            setattr(self, part, freeze(copy.deepcopy(getattr(samclip, part))))
