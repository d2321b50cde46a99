"""Torch-side inference helpers for evaluation (SamPredictor-equivalent pre/post-processing).

Images are (H, W, 3) uint8 RGB numpy arrays; boxes (K, 4) float [x0, y0, x1, y1] in original pixels;
returned masks are (K, H, W) bool at original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from training.data.datasets import resize_longest_pad, to_chw_uint8
from training.eval.templates import class_embeddings


@dataclass
class Prepared:
    """x (1, 3, S, S) normalised; new_hw: size of the resized image inside the padded frame; orig_hw."""

    x: torch.Tensor
    new_hw: tuple[int, int]
    orig_hw: tuple[int, int]


class SamClipRunner:
    """Evaluation wrapper around a SamClip (or a SAM-only SamClip for teacher SAM evaluation)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.size = model.config.image_size

    def prepare(self, image: np.ndarray, size: int | None = None, square: bool = False) -> Prepared:
        """Resize longest side to `size` (default S) and pad (SAM), or plain resize to size×size (`square`)."""
        size = size or self.size
        h, w = image.shape[:2]
        img = to_chw_uint8(image)
        if square:
            x = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]
            new_hw = (size, size)
        else:
            scale = size / max(h, w)
            new_hw = (int(h * scale + 0.5), int(w * scale + 0.5))
            x = resize_longest_pad(img, size)
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        return Prepared(x[None], new_hw, (h, w))

    @torch.no_grad()
    def clip_images(self, images: list[np.ndarray], size: int | None = None) -> torch.Tensor:
        """(B, D) L2-normalised pooled CLIP-head embeddings."""
        x = torch.cat([self.prepare(im, size).x for im in images])
        return self.model.clip_head(self.model.image_encoder(x)[1])[0]

    @torch.no_grad()
    def text_classes(self, names: list[str]) -> torch.Tensor:
        """(C, D) template-ensembled text embeddings from SAM-CLIP's text tower."""
        return class_embeddings(self.model.text_encoder, names)

    @torch.no_grad()
    def encode(self, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """-> SAM embedding (1, C, h, w), dense CLIP patch embeddings (h, w, D)."""
        emb, tokens = self.model.image_encoder(prep.x)
        return emb, self.model.clip_head(tokens)[1][0]

    def postprocess(self, low_res: torch.Tensor, prep: Prepared) -> np.ndarray:
        """(K, 1, 4h, 4w) logits -> (K, H, W) bool at original size (SamPredictor's rule)."""
        s = prep.x.shape[-1]
        up = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)
        up = up[..., : prep.new_hw[0], : prep.new_hw[1]]
        return (F.interpolate(up, size=prep.orig_hw, mode="bilinear", align_corners=False)[:, 0] > 0).numpy()

    def to_input(self, xy: torch.Tensor, prep: Prepared) -> torch.Tensor:
        """Original-pixel coordinates [..., 2] -> padded input frame."""
        sy, sx = prep.new_hw[0] / prep.orig_hw[0], prep.new_hw[1] / prep.orig_hw[1]
        return xy * torch.tensor([sx, sy])

    @torch.no_grad()
    def box_masks(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Single-mask SAM output for each box -> (masks (K, H, W) bool, predicted IoU (K,))."""
        prep = self.prepare(image)
        emb, _ = self.model.image_encoder(prep.x)
        b = self.to_input(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 2, 2), prep).reshape(-1, 4)
        low, iou = self.model.segment(emb, boxes=b, multimask_output=False)
        return self.postprocess(low, prep), iou[:, 0].numpy()

    @torch.no_grad()
    def refine(
        self, prep: Prepared, emb: torch.Tensor, prob: torch.Tensor, n_points: int, gen: torch.Generator
    ) -> torch.Tensor:
        """Seed appendix A.3: coarse CLIP-head probability map prob (h, w) -> point prompts importance-sampled
        from it + the coarse mask as SAM's mask prompt -> low-res logits (1, 1, 4h, 4w)."""
        h, w = prob.shape
        s = prep.x.shape[-1]
        idx = torch.multinomial(prob.flatten() + 1e-8, n_points, replacement=True, generator=gen)
        jitter = torch.rand(n_points, 2, generator=gen)
        cells = torch.stack([idx % w, idx // w], -1).float()
        coords = ((cells + jitter) * torch.tensor([s / w, s / h]))[None]
        mask_in = F.interpolate(prob[None, None], size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        mask_in = (2 * mask_in - 1) * 10.0
        low, _ = self.model.segment(
            emb, points=(coords, torch.ones(1, n_points)), masks=mask_in, multimask_output=False
        )
        return low
