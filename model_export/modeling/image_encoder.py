"""SAM ViT image encoder returning both the SAM embedding and the last block's patch tokens.

Parameter names match ``segment_anything``'s ``ImageEncoderViT`` so official checkpoints load strictly.
Inputs of any side divisible by the patch size work: the absolute position embedding is resized
bicubically and the relative position tables of the global-attention blocks linearly, as needed.

Between blocks the tokens are kept flat, (B, h*w, C) in row-major grid order, and only the window partition
and the neck see the (B, h, w, C) grid. Same math as segment_anything's (B, h, w, C) blocks, but the exported
graph is faster in OpenVINO: its CPU plugin reads a 4-D token tensor (1, 64, 64, 768) as NCHW with 64
"channels" and surrounds every LayerNorm, residual add and linear layer with layout reorders; on 3-D tokens
they disappear (vit_b at 1024 px, one thread: -7% bf16, -8% int8-qdq encoder time). The relative-position
attention runs in chunks of query rows (`BIAS_CHUNK_PAIRS`), again the same values, for the cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig
from .common import LayerNorm2d, MLPBlock


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a relative-position table ``(L, C)`` to ``(length, C)`` (identity if equal)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    table = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear", align_corners=False)
    return table.squeeze(0).t()


def rel_pos_lookup(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative embeddings for every (query, key) pair along one axis: ``(q_size, k_size, C)``.

    ``rel_pos`` (L, C) is resized to ``2 * max(q_size, k_size) - 1`` rows when its length differs.
    """
    table = resize_rel_pos(rel_pos, 2 * max(q_size, k_size) - 1)
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_pos = torch.arange(q_size, dtype=torch.float32)[:, None] * q_scale
    k_pos = torch.arange(k_size, dtype=torch.float32)[None, :] * k_scale
    index = (q_pos - k_pos + (k_size - 1) * k_scale).long()
    return table[index]


# Relative-position attention runs over chunks of whole query rows, each chunk's additive bias holding about
# this many (query, key) pairs per head (2**20: 256 queries x 4096 keys for the 64 x 64 global blocks, one chunk
# for 14 x 14 windows). Same values as one pass; each chunk's bias (2 MB per head in bf16) is built and read
# while it is still in cache instead of a 400 MB bias streamed through memory twice: vit_b at 1024 px in
# OpenVINO, -12% per global-attention block; the two small bias terms are computed once per block (and PyTorch
# holds 1/16 of the bias at a time).
BIAS_CHUNK_PAIRS = 1 << 20


class Attention(nn.Module):
    """Multi-head self-attention over an h x w token grid with decomposed relative positions."""

    def __init__(
        self, dim: int, num_heads: int, use_rel_pos: bool, rel_pos_size: tuple[int, int] | None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            assert rel_pos_size is not None
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, self.head_dim))

    def _rel_pos_terms(self, q: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two decomposed relative-position terms of the unscaled queries q (B, heads, h*w, d): bias_h
        (B, heads, h, w, h) over key rows and bias_w (B, heads, h, w, w) over key columns."""
        (h, w), b = size, q.shape[0]
        r_h = rel_pos_lookup(h, h, self.rel_pos_h)  # (h, h, d)
        r_w = rel_pos_lookup(w, w, self.rel_pos_w)  # (w, w, d)
        q_grid = q.reshape(b, self.num_heads, h, w, self.head_dim)
        return torch.einsum("bnhwc,hkc->bnhwk", q_grid, r_h), torch.einsum("bnhwc,wkc->bnhwk", q_grid, r_w)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """q, k, v (B, heads, h*w, d) -> (B, heads, h*w, d); with relative positions, chunk by chunk of query
        rows, each with its additive bias (B, heads, r*w, h*w) = bias_h[rows] (+) bias_w[rows]."""
        if not self.use_rel_pos:
            return F.scaled_dot_product_attention(q, k, v)
        (h, w), b = size, q.shape[0]
        bias_h, bias_w = self._rel_pos_terms(q, size)
        step = max(1, BIAS_CHUNK_PAIRS // (w * h * w))  # grid rows per chunk
        outs = []
        for row in range(0, h, step):
            end = min(row + step, h)
            bias = bias_h[:, :, row:end, :, :, None] + bias_w[:, :, row:end, :, None, :]  # (b, n, r, w, h, w)
            bias = bias.reshape(b, self.num_heads, (end - row) * w, h * w)
            outs.append(F.scaled_dot_product_attention(q[:, :, row * w : end * w], k, v, attn_mask=bias))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x (B, h*w, C) f32 tokens of an h x w grid, row-major -> (B, h*w, C); size = (h, w)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, h*w, d)
        out = self._attend(q, k, v, size)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> windows (B * nH * nW, window, window, C) after zero-padding bottom/right."""
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: windows -> (B, H, W, C) with the padding cropped."""
    hp, wp = padded
    h, w = size
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, hp, wp, c)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


class Block(nn.Module):
    """Pre-LN ViT block; windowed attention when ``window_size > 0`` else global attention."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, use_rel_pos: bool, window_size: int, grid: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        size = (window_size, window_size) if window_size > 0 else (grid, grid)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, use_rel_pos, size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x (B, h*w, C) tokens of the h x w grid, row-major -> (B, h*w, C); size = (h, w)."""
        y = self.norm1(x)
        if self.window_size > 0:
            b, n, c = x.shape
            ws = self.window_size
            y, padded = window_partition(y.reshape(b, size[0], size[1], c), ws)
            y = self.attn(y.reshape(-1, ws * ws, c), (ws, ws)).reshape(-1, ws, ws, c)
            y = window_unpartition(y, ws, padded, size).reshape(b, n, c)
        else:
            y = self.attn(y, size)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, S, S) -> (B, S/p, S/p, C) channels-last."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM ViT encoder.

    forward(x): x (B, 3, S', S') f32, normalised pixels (S' divisible by the patch size; the config's
    image_size S is the native size) -> (image_embeddings (B, out_chans, h, w), patch_tokens (B, h, w, W)),
    h = S'/p. patch_tokens, the CLIP head's input, are the last block's output before the neck (W = embed_dim)
    with ``tokens_from="blocks"``, or the image embeddings themselves, channels last (W = out_chans), with
    ``tokens_from="neck"``.
    """

    def __init__(self, cfg: EncoderConfig, image_size: int, tokens_from: str = "blocks") -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = image_size
        self.tokens_from = tokens_from
        grid = image_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                cfg.use_rel_pos,
                0 if i in cfg.global_attn_indexes else cfg.window_size,
                grid,
            )
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def abs_pos(self, h: int, w: int) -> torch.Tensor:
        """Absolute position embedding for an h x w grid: (1, h, w, C), bicubic-resized if needed."""
        pos = self.pos_embed
        if pos.shape[1] == h and pos.shape[2] == w:
            return pos
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(x)
        b, h, w, c = x.shape
        x = (x + self.abs_pos(h, w)).reshape(b, h * w, c)
        for block in self.blocks:
            x = block(x, (h, w))
        x = x.reshape(b, h, w, c)
        embeddings = self.neck(x.permute(0, 3, 1, 2))
        return embeddings, embeddings.permute(0, 2, 3, 1) if self.tokens_from == "neck" else x
