"""Export wrappers: thin nn.Modules that give each bundle graph its fixed ONNX signature (BUNDLE.md).

They hold references to the SamClip sub-modules (no weight copies) and only use operations that trace to
shape-generic ONNX (no Python branching on tensor values, no shapes baked in except the image size S).
The SAM decoder wrapper uses the graph-friendly entry points of model_export.modeling
(`PromptEncoder.embed_points`, `MaskDecoder.predict_masks`) so every mask token is returned.
"""

from __future__ import annotations

import torch
from torch import nn


class EncoderOnnx(nn.Module):
    """image (B,3,S,S) f32 normalised+padded -> image_embeddings (B,C,h,w) f32, patch_tokens (B,h,w,W) f32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_embeddings, patch_tokens = self.image_encoder(image)
        return image_embeddings, patch_tokens


class ClipHeadOnnx(nn.Module):
    """patch_tokens (B,h,w,W) f32 -> image_embedding (B,D), patch_embeddings (B,h,w,D); L2-normalised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.clip_head = model.clip_head

    def forward(self, patch_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_embedding, patch_embeddings = self.clip_head(patch_tokens)
        return image_embedding, patch_embeddings


class TextEncoderOnnx(nn.Module):
    """input_ids (N,77) int64 CLIP BPE ids -> text_embedding (N,D) f32 L2-normalised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text_encoder = model.text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)


class SamDecoderOnnx(nn.Module):
    """SAM prompt encoder + mask decoder for K prompts of N points each, all mask tokens returned.

    Inputs (all f32):
      image_embeddings (1,C,h,w); point_coords (K,N,2) [x, y] in the resized+padded input frame (0..S);
      point_labels (K,N): -1 padding (not-a-point, coordinates ignored), 0 negative, 1 positive,
      2 box top-left, 3 box bottom-right; mask_input (K,1,4h,4w) low-res logits; has_mask_input (K,)
      1.0 where mask_input is used, else SAM's no-mask embedding.
    Outputs (f32): iou_predictions (K,M+1); low_res_masks (K,M+1,4h,4w) logits. Index 0 is the single-mask
      output, 1..M the multimask ones. (Callers upscale low_res_masks themselves, straight to the size they
      need; format-1 bundles also had an S x S `masks` output.)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        with torch.no_grad():
            self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().detach().clone())

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """mask_input (K,1,4h,4w), has_mask_input (K,) -> dense embeddings (K,E,h,w).

        A select (not a blend), so non-finite values in an unused mask_input cannot leak into the output.
        """
        from_mask = self.prompt_encoder.mask_downscaling(mask_input)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        use_mask = (has_mask_input > 0.5).reshape(-1, 1, 1, 1)
        return torch.where(use_mask, from_mask, no_mask)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # labels -1..3 as SAM's _embed_points/_embed_boxes: -1 -> not_a_point only, else PE + label embedding
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        # (1,C,h,w) image embedding broadcast over the K prompts inside predict_masks (no repeat_interleave)
        low_res_masks, iou_predictions = self.mask_decoder.predict_masks(
            image_embeddings, self.image_pe, sparse, dense
        )
        return iou_predictions, low_res_masks
