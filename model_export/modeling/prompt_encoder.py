"""SAM prompt encoder: random-Fourier position encoding of points / box corners, mask downscaling.

Semantics are exactly ``segment_anything``'s ``PromptEncoder`` (parameter names too), written with
masks and ``torch.where`` instead of boolean index assignment so it exports to ONNX.
Point labels: -1 padding ("not a point"), 0 negative, 1 positive, 2 box top-left, 3 box bottom-right.
Coordinates are [x, y] pixels in the resized-and-padded input frame (0..S).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import SamClipConfig
from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Fourier features with a fixed random Gaussian frequency matrix (2, num_pos_feats)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 2) in [0, 1] -> (..., 2 * num_pos_feats) = [sin, cos]."""
        proj = (2.0 * coords - 1.0) @ self.positional_encoding_gaussian_matrix
        proj = 2.0 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an h x w grid: (2 * num_pos_feats, h, w)."""
        h, w = size
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """coords (B, N, 2) [x, y] pixels in an image of (H, W) = image_size -> (B, N, 2 * feats)."""
        size = torch.tensor([float(image_size[1]), float(image_size[0])], device=coords.device)
        return self._encode(coords.to(torch.float32) / size)


class PromptEncoder(nn.Module):
    """Embeds points, boxes and masks into sparse (B, N, C) and dense (B, C, h, w) prompt embeddings."""

    def __init__(self, cfg: SamClipConfig) -> None:
        super().__init__()
        dim = cfg.encoder.out_chans
        chans = cfg.prompt_encoder.mask_in_chans
        self.embed_dim = dim
        self.input_image_size = (cfg.image_size, cfg.image_size)
        self.image_embedding_size = (cfg.embed_grid, cfg.embed_grid)
        self.mask_input_size = (cfg.mask_input_size, cfg.mask_input_size)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.num_point_embeddings = 4  # negative, positive, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(chans // 4),
            nn.GELU(),
            nn.Conv2d(chans // 4, chans, kernel_size=2, stride=2),
            LayerNorm2d(chans),
            nn.GELU(),
            nn.Conv2d(chans, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Position encoding of the image-embedding grid: (1, C, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords (K, N, 2) f32 pixels, labels (K, N) (any numeric dtype) -> (K, N, C).

        Label -1 gets only ``not_a_point_embed``; labels 0..3 add ``point_embeddings[label]`` to the
        Fourier encoding of the pixel centre (coords + 0.5). No padding point is added here.
        """
        pe = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)
        labels = labels[..., None]
        pe = torch.where(labels == -1, torch.zeros_like(pe), pe)
        pe = pe + (labels == -1).to(pe.dtype) * self.not_a_point_embed.weight
        for i, emb in enumerate(self.point_embeddings):
            pe = pe + (labels == i).to(pe.dtype) * emb.weight
        return pe

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes (K, 4) [x0, y0, x1, y1] pixels -> corner embeddings (K, 2, C) (labels 2 and 3)."""
        corners = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([2, 3], device=boxes.device).expand(corners.shape[0], 2)
        return self.embed_points(corners, labels)

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """masks (K, 1, 4h, 4w) low-res logits -> dense embeddings (K, C, h, w)."""
        return self.mask_downscaling(masks)

    def dense_embeddings(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """Graph-friendly mask prompt: mask_input (K, 1, 4h, 4w), has_mask_input (K,) in {0, 1}.

        Returns (K, C, h, w): the mask embedding where has_mask_input is 1, else ``no_mask_embed``.
        """
        flag = has_mask_input.to(mask_input.dtype).reshape(-1, 1, 1, 1)
        no_mask = self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return flag * self.embed_masks(mask_input) + (1.0 - flag) * no_mask

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's prompt encoding.

        points: (coords (K, N, 2), labels (K, N)) or None; boxes: (K, 4) or None;
        masks: (K, 1, 4h, 4w) or None. Without boxes one padding point (label -1) is appended to the
        points; box corners follow the points. Returns sparse (K, N', C) and dense (K, C, h, w).
        """
        if points is not None:
            k = points[0].shape[0]
        elif boxes is not None:
            k = boxes.shape[0]
        elif masks is not None:
            k = masks.shape[0]
        else:
            k = 1
        device = self.no_mask_embed.weight.device
        parts = [torch.empty(k, 0, self.embed_dim, device=device)]
        if points is not None:
            coords, labels = points
            if boxes is None:
                coords = torch.cat([coords, torch.zeros_like(coords[:, :1])], dim=1)
                labels = torch.cat([labels, torch.full_like(labels[:, :1], -1)], dim=1)
            parts.append(self.embed_points(coords, labels))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(k, -1, h, w)
        return sparse, dense
