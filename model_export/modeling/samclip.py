"""SamClip: the whole model (shared SAM encoder, SAM prompt encoder + mask decoder, CLIP head, text tower)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import SamClipConfig
from .clip_head import ClipHead
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .text_encoder import TextEncoder


class SamClip(nn.Module):
    """SAM-CLIP. State-dict prefixes: image_encoder., prompt_encoder., mask_decoder. (official SAM layout),
    clip_head., text_encoder. (open_clip text keys), logit_scale (log of the CLIP similarity multiplier).

    ``pixel_mean`` / ``pixel_std`` (3, 1, 1) are non-persistent buffers in 0..255 RGB units.
    """

    def __init__(self, cfg: SamClipConfig) -> None:
        super().__init__()
        self.config = cfg
        self.image_encoder = ImageEncoderViT(cfg.encoder, cfg.image_size, cfg.clip_head.input)
        self.prompt_encoder = PromptEncoder(cfg)
        self.mask_decoder = MaskDecoder(cfg)
        self.clip_head = ClipHead(cfg.clip_head, cfg.clip_width)
        self.text_encoder = TextEncoder(cfg.text)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).reshape(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).reshape(3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..255 -> (x - mean) / std, same shape (no resize, no padding)."""
        return (images.to(torch.float32) - self.pixel_mean) / self.pixel_std

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, S, S) normalised -> (image_embeddings (B, C, h, w), patch_tokens (B, h, w, W))."""
        return self.image_encoder(x)

    def encode_clip_image(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S', S') normalised -> L2-normalised CLIP image embedding (B, D)."""
        return self.clip_head(self.image_encoder(x)[1])[0]

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (N, 77) int64 -> (N, D) L2-normalised."""
        return self.text_encoder(input_ids)

    def clip_logits(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """exp(logit_scale) * cosine similarities: (B, D) x (N, D) -> (B, N)."""
        return self.logit_scale.exp() * image_embedding @ text_embedding.t()

    def segment(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM prompt -> (low-res mask logits (K, M|1, 4h, 4w), iou (K, M|1)); image_embeddings (1, C, h, w)."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
