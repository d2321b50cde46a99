"""SAM mask decoder: output tokens + prompt tokens through the two-way transformer, hypernetwork masks.

Parameter names follow ``segment_anything.modeling.mask_decoder``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import SamClipConfig
from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts M+1 low-res mask logits (index 0 single-mask, 1..M multimask) and their IoU scores."""

    def __init__(self, cfg: SamClipConfig) -> None:
        super().__init__()
        dim = cfg.encoder.out_chans
        dc = cfg.mask_decoder
        self.transformer_dim = dim
        self.transformer = TwoWayTransformer(
            depth=dc.transformer_depth,
            embedding_dim=dim,
            num_heads=dc.transformer_num_heads,
            mlp_dim=dc.transformer_mlp_dim,
        )
        self.num_multimask_outputs = dc.num_multimask_outputs
        self.num_mask_tokens = dc.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, dc.iou_head_hidden_dim, self.num_mask_tokens, dc.iou_head_depth)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All outputs: masks (K, M+1, 4h, 4w) logits, iou (K, M+1).

        image_embeddings (1 or K, C, h, w); image_pe (1, C, h, w); sparse (K, N, C); dense (K, C, h, w).
        """
        k = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(k, -1, -1), sparse_prompt_embeddings], dim=1)
        src = (image_embeddings + dense_prompt_embeddings).expand(k, -1, -1, -1)
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_out = hs[:, 0, :]
        mask_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(k, c, h, w))
        hyper = torch.stack(
            [mlp(mask_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, cu, hu, wu = upscaled.shape
        masks = (hyper @ upscaled.reshape(k, cu, hu * wu)).reshape(k, -1, hu, wu)
        return masks, self.iou_prediction_head(iou_out)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's selection: multimask -> outputs 1..M, else output 0. Returns (masks, iou_predictions)."""
        masks, iou = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou[:, sel]
