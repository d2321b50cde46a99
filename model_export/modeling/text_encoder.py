"""OpenCLIP text tower (causal transformer, EOT pooling, projection) with open_clip's parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig
from .clip_blocks import Transformer


class TextEncoder(nn.Module):
    """forward(input_ids (N, L) int64, L <= context_length) -> (N, embed_dim) f32 L2-normalised.

    Pools at the position of the largest token id in each row (the EOT token, id 49407).
    Keys: token_embedding, positional_embedding, transformer.resblocks.*, ln_final, text_projection.
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))
        causal = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """open_clip's text-tower initialisation."""
        width, layers = self.cfg.width, self.cfg.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:n]
        x = self.transformer(x, self.attn_mask[:n, :n])
        x = self.ln_final(x)
        eot = input_ids.argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        return F.normalize(pooled @ self.text_projection, dim=-1)
