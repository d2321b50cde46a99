"""The fused SAM decoder: the plain decoder's function (same inputs, outputs and weights) in fewer operations.

`FusedSamDecoder(model)` is `SamDecoderOnnx` (model_export/onnx_wrappers.py) rewritten for a CPU runtime; it
holds references to the same prompt encoder / mask decoder modules (no weight copies) and computes, in exact
arithmetic, the same outputs. Four rewrites (R = h*w image tokens, E = transformer width, H heads of width d,
T = 1 + M + N prompt-side tokens, C1 = E/4, C2 = E/8):

1. Attention between the T tokens and the R image tokens is re-associated so that no (R, E) x (E, H*d)
   projection of the image tokens is ever formed:
   - token -> image: softmax(q_h (x W_k,h + b_k,h)^T) (x' W_v,h + b_v,h) =
     softmax((q_h W_k,h) x^T) (softmax . x') W_v,h^T + b_v,h   (the q_h . b_k,h term is constant along the
     softmax axis and cancels; softmax rows sum to 1, so the value bias passes through);
   - image -> token: scores = x (W_q,h^T k_h^T) + b_q,h k_h^T and out_proj(A V) = sum_h A_h (v_h W_o,h^T) + b_o.
   Each attention then costs 2 * R * E * H*T multiply-adds instead of 2 * R * E * H*d + ...: with d = 16 and a
   box prompt (T = 7) about 2.3x fewer in SAM ViT-B, and every product is a plain (rows, E) GEMM (no
   per-head transposes of R x d tensors, no (R, T) x (T, d) products with a 7-long inner axis).
2. The upscaling (two 2x2 stride-2 transposed convolutions, LayerNorm2d, GELU) touches no neighbour: it is a
   per-token MLP E -> 4*C1 -> (LayerNorm over C1, GELU) -> 16*C2 (GELU), then the hypernetwork product with the
   M mask tokens, and ONE depth-to-space of the M output channels at the end; everything stays in the
   row-major (R, E) token layout the transformer produced.
3. The mask prompt path (2x2/2 conv, LayerNorm2d, GELU, 2x2/2 conv, LayerNorm2d, GELU, 1x1 conv) likewise runs
   per image token on a space-to-depth view of the (4h, 4w) mask (16 values per token), then is selected
   with has_mask_input exactly like the plain graph.
4. The image tokens are rows (K|1, R, E) from the start: the image embedding is transposed once per call (not
   per prompt), the products with them as the right operand read them transposed in place (OpenVINO's MatMul
   transpose_b, the image -> token output as probs^T values), and the LayerNorms run over the last axis. With
   them channels-first (E, R), the upscaling's first GEMM needed a transpose of the (K, E, R) keys per prompt
   (0.49 ms of ~5.5 ms per prompt at 2 cores). OpenVINO's snippets would fuse the token -> image attention in
   this layout into one slower MHA subgraph: the service compiles this graph without them
   (service/runtime/openvino.py VARIANT_CONFIG).

Nothing is cached per image (every input is the plain graph's): the layer-0 projections of the image tokens
that do not depend on the prompt would take 3 x R x E/2 values per image (3 MB in fp16 for ViT-B), while the
rewrites above already remove them. `python -m model_export decoder-variant` / `export` write this graph as the
`fused` variant of `sam_decoder` (model_export/decoder_variant.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model_export.onnx_wrappers import SamDecoderOnnx


class _Reassociated(nn.Module):
    """Holds an `Attention` module (shared, not copied); `_per_head(proj, x)`: x (K, T, E) through one of its
    projections, split per head -> (K, H, T, d), with the weight of another projection per head (H, d, E)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.heads, self.inner = attn.num_heads, attn.internal_dim
        self.d = self.inner // self.heads

    def _per_head(self, proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return proj(x).reshape(batch, tokens, self.heads, self.d).transpose(1, 2)

    def _head_weight(self, proj: nn.Module) -> torch.Tensor:
        return proj.weight.reshape(self.heads, self.d, proj.weight.shape[1])


class TokenToImage(_Reassociated):
    """attn(q, k, v) of an `Attention` module, re-associated (module docstring, 1).
    q (K, T, E) tokens; k, v (B, R, E) image tokens as rows, B = 1 or K -> (K, T, E)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn, heads, inner, d = self.attn, self.heads, self.inner, self.d
        batch, tokens, width = q.shape
        qh = self._per_head(attn.q_proj, q)  # (K, H, T, d)
        wk = self._head_weight(attn.k_proj)  # rows of W_k per head (H, d, E)
        g = (qh @ wk).reshape(batch, heads * tokens, width) * (1.0 / math.sqrt(d))  # (K, H*T, E)
        probs = torch.softmax(g @ k.transpose(1, 2), dim=-1)  # (K, H*T, R)
        mixed = (probs @ v).reshape(batch, heads, tokens, width)  # (K, H, T, E)
        wv = self._head_weight(attn.v_proj).transpose(1, 2)  # (H, E, d)
        out = mixed @ wv + attn.v_proj.bias.reshape(heads, 1, d)  # (K, H, T, d)
        return attn.out_proj(out.transpose(1, 2).reshape(batch, tokens, inner))


class ImageToToken(_Reassociated):
    """attn(q, k, v) re-associated (module docstring, 1). q (B, R, E) image tokens as rows, B = 1 or K;
    k, v (K, T, E) tokens -> the attention output as rows (K, R, E)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn, heads, d = self.attn, self.heads, self.d
        batch, tokens, width = k.shape
        scale = 1.0 / math.sqrt(d)
        kh = self._per_head(attn.k_proj, k)  # (K, H, T, d)
        wq = self._head_weight(attn.q_proj)  # (H, d, E)
        g = (kh @ wq).reshape(batch, heads * tokens, width) * scale  # (K, H*T, E)
        bias = (kh @ attn.q_proj.bias.reshape(heads, d, 1)).reshape(batch, heads * tokens, 1) * scale
        scores = (g @ q.transpose(1, 2) + bias).reshape(batch, heads, tokens, -1)  # (K, H, T, R)
        probs = torch.softmax(scores, dim=2).reshape(batch, heads * tokens, -1)  # over T; R stays contiguous
        vh = self._per_head(attn.v_proj, v)  # (K, H, T, d)
        wo = attn.out_proj.weight.t().reshape(heads, d, width)  # (H, d, E)
        values = (vh @ wo).reshape(batch, heads * tokens, width)  # (K, H*T, E)
        return probs.transpose(1, 2) @ values + attn.out_proj.bias  # (K, R, E)


class MaskRows(nn.Module):
    """PromptEncoder.mask_downscaling per image token, selected by has_mask_input (module docstring, 3).
    mask_input (K, 1, 4h, 4w), has_mask_input (K,) -> dense prompt embeddings as rows (K, R, E)."""

    def __init__(self, prompt_encoder: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.prompt_encoder, self.grid = prompt_encoder, grid

    def forward(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        conv0, ln0, _, conv1, ln1, _, conv2 = self.prompt_encoder.mask_downscaling
        k = mask_input.shape[0]
        h, w = self.grid
        # (K, 1, 4h, 4w) -> (K, R, 4 (i1 j1: second conv tap), 4 (i0 j0: first conv tap))
        taps = mask_input.reshape(k, h, 2, 2, w, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).reshape(k, h * w, 4, 4)
        x = taps @ conv0.weight.reshape(-1, 4).t() + conv0.bias  # (K, R, 4, C/4)
        x = F.gelu(F.layer_norm(x, (int(ln0.weight.shape[0]),), ln0.weight, ln0.bias, ln0.eps))
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.weight.shape[0], -1)  # (C, 4 * C/4)
        x = x.reshape(k, h * w, -1) @ w1.t() + conv1.bias  # (K, R, C)
        x = F.gelu(F.layer_norm(x, (int(ln1.weight.shape[0]),), ln1.weight, ln1.bias, ln1.eps))
        from_mask = x @ conv2.weight.reshape(conv2.weight.shape[0], -1).t() + conv2.bias  # (K, R, E)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
        return torch.where((has_mask_input > 0.5).reshape(-1, 1, 1), from_mask, no_mask)


class Upscaling(nn.Module):
    """MaskDecoder.output_upscaling + hypernetwork product per image token (module docstring, 2), on the tokens
    as rows: the per-token products run as (R, E) x weight GEMMs at the backend's reduced precision, and the
    LayerNorm over C1 is the last axis.
    keys (K, R, E) as rows, hyper (K, M, C2) -> mask logits (K, M, 4h, 4w)."""

    def __init__(self, mask_decoder: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.mask_decoder, self.grid = mask_decoder, grid

    def forward(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        conv1, norm, _, conv2, _ = self.mask_decoder.output_upscaling
        k, m = hyper.shape[0], hyper.shape[1]
        h, w = self.grid
        # ConvTranspose2d weights (C_in, C_out, 2, 2) -> columns (i, j, C_out) for sub-pixel (2y + i, 2x + j)
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.weight.shape[0], -1)  # (E, 4 * C1)
        # biases tiled over the sub-pixels and added to the GEMM output before any reshape: OpenVINO fuses them
        # into the GEMM (a separate broadcast Add over the (K, R, 4, 4, C2) view: 0.43 ms per prompt, ViT-B)
        x = (keys @ w1 + conv1.bias.repeat(4)).reshape(k, h * w, 4, -1)  # (K, R, 4 (i1 j1), C1)
        x = F.gelu(F.layer_norm(x, (int(norm.weight.shape[0]),), norm.weight, norm.bias, norm.eps))
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.weight.shape[0], -1)  # (C1, 4 * C2)
        x = F.gelu(x.reshape(k, h * w * 4, -1) @ w2 + conv2.bias.repeat(4))  # (K, R * 4, 4 (i0 j0) * C2)
        logits = x.reshape(k, h * w * 16, -1) @ hyper.transpose(1, 2)  # (K, R * 16, M)
        # rows (y, x, i1, j1, i0, j0) -> pixel (4y + 2 i1 + i0, 4x + 2 j1 + j0)
        logits = logits.reshape(k, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(k, m, 4 * h, 4 * w)


class FusedSamDecoder(SamDecoderOnnx):
    """Same signature and outputs as SamDecoderOnnx (see the module docstring for what differs inside).
    Submodule names give the exported nodes' scopes: layers.<i>.token_to_image / image_to_token,
    final_token_to_image, mask_rows, upscaling."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        pe = self.image_pe  # (1, E, h, w)
        grid = (int(pe.shape[2]), int(pe.shape[3]))
        self.register_buffer("pe_rows", pe.flatten(2).transpose(1, 2).contiguous())  # (1, R, E)
        transformer = self.mask_decoder.transformer
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "token_to_image": TokenToImage(layer.cross_attn_token_to_image),
                    "image_to_token": ImageToToken(layer.cross_attn_image_to_token),
                }
            )
            for layer in transformer.layers
        )
        self.final_token_to_image = TokenToImage(transformer.final_attn_token_to_image)
        self.mask_rows = MaskRows(self.prompt_encoder, grid)
        self.upscaling = Upscaling(self.mask_decoder, grid)

    def _transformer(self, keys: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TwoWayTransformer.forward on image tokens as rows keys (K|1, R, E) and tokens (K, T, E)."""
        transformer, pe = self.mask_decoder.transformer, self.pe_rows
        queries = tokens
        for layer, fused in zip(transformer.layers, self.layers, strict=True):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + tokens
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)
            keys_pe = keys + pe  # keys change only at norm4: one sum for both cross attentions
            queries = layer.norm2(queries + fused["token_to_image"](queries + tokens, keys_pe, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            attended = fused["image_to_token"](keys_pe, queries + tokens, queries)
            keys = layer.norm4(keys + attended)
        attended = self.final_token_to_image(queries + tokens, keys + pe, keys)
        return transformer.norm_final_attn(queries + attended), keys

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.mask_decoder
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)  # (K, N, E)
        k = sparse.shape[0]
        out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(k, -1, -1), sparse], dim=1)  # (K, T, E)
        # (1, E, h, w) -> rows (1, R, E): the one transpose of the image tokens, per call (not per prompt)
        keys = image_embeddings.flatten(2).transpose(1, 2) + self.mask_rows(mask_input, has_mask_input)
        hs, keys = self._transformer(keys, tokens)
        mask_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
        hyper = torch.stack(
            [mlp(mask_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        return decoder.iou_prediction_head(hs[:, 0, :]), self.upscaling(keys, hyper)
