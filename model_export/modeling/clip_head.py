"""CLIP head: a few transformer blocks over the encoder's patch tokens, max-pool, projection.

Works on any token grid h x w: the learnable positional embedding lives on a ``pos_grid`` square and is
bicubically resized to (h, w) on every call (a no-op numerically when the sizes match).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ClipHeadConfig
from .clip_blocks import Transformer


class ClipHead(nn.Module):
    """forward(patch_tokens (B, h, w, W) f32) -> (image_embedding (B, D), patch_embeddings (B, h, w, D)).

    Both outputs are L2-normalised along D. The image embedding is proj(max over patches of
    ln_post(tokens)); patch embeddings apply the same ln_post + proj to every patch.
    """

    def __init__(self, cfg: ClipHeadConfig, width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.width = width
        self.positional_embedding = nn.Parameter(torch.zeros(1, width, cfg.pos_grid, cfg.pos_grid))
        self.transformer = Transformer(width, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Linear(width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.positional_embedding, std=0.02)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    def pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding resized to the token grid: (1, h*w, W)."""
        pos = F.interpolate(self.positional_embedding, size=(h, w), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, patch_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, c = patch_tokens.shape
        x = patch_tokens.reshape(b, h * w, c) + self.pos_embed(h, w)
        x = self.ln_post(self.transformer(x))
        image = F.normalize(self.proj(x.amax(dim=1)), dim=-1)
        dense = F.normalize(self.proj(x), dim=-1).reshape(b, h, w, -1)
        return image, dense
