"""Inputs, SamPredictor-equivalent pre/post-processing and the PyTorch reference used by `verify`.

Coordinates: images are RGB uint8 (H, W, 3); prompts are [x, y] pixels in the resized-and-padded input frame
(0..S) unless a function says "original". Pre/post-processing follows segment_anything's SamPredictor:
resize longest side to S (PIL bilinear), normalise, pad bottom/right; masks S×S -> crop -> original size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model_export.export_onnx import example_text_ids


def resized_shape(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(new_h, new_w) after resizing the longest side to image_size (SAM's ResizeLongestSide rule)."""
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(image: np.ndarray, cfg: Any) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 (H,W,3) -> normalised, bottom/right zero-padded (1,3,S,S) f32 and the (new_h, new_w) size."""
    s = cfg.image_size
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], s)
    resized = np.array(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    x = torch.as_tensor(resized, dtype=torch.float32).permute(2, 0, 1)
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32).view(3, 1, 1)
    x = F.pad((x - mean) / std, (0, s - new_w, 0, s - new_h))
    return x.unsqueeze(0), (new_h, new_w)


def upscale(low_res: torch.Tensor, image_size: int) -> torch.Tensor:
    """(K,M,4h,4w) logits -> (K,M,S,S) logits, bilinear, align_corners=False (SAM's first resize)."""
    return F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)


def masks_at_original(
    masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> np.ndarray:
    """(K,M,S,S) logits -> crop to input_size -> bilinear to original (H,W) -> bool (K,M,H,W) (logits > 0)."""
    cropped = masks[..., : input_size[0], : input_size[1]]
    full = F.interpolate(cropped, original_size, mode="bilinear", align_corners=False)
    return (full > 0).numpy()


@dataclass
class Prompt:
    """One SAM prompt in SamPredictor form (input frame). points (P,2), labels (P,), box (4,) x0,y0,x1,y1,
    mask (1,4h,4w) low-res logits; any of them may be None (at least one of points/box is set)."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Bundle form: points then box corners (labels 2, 3), or one padding point (0,0,-1) without a box."""
        coords = [] if self.points is None else [self.points.reshape(-1, 2)]
        labels = [] if self.labels is None else [self.labels.reshape(-1)]
        if self.box is None:
            coords.append(np.zeros((1, 2)))
            labels.append(np.array([-1.0]))
        else:
            coords.append(self.box.reshape(2, 2))
            labels.append(np.array([2.0, 3.0]))
        return np.concatenate(coords).astype(np.float32), np.concatenate(labels).astype(np.float32)


def decoder_feeds(emb: np.ndarray, prompts: list[Prompt], mask_size: int) -> dict[str, np.ndarray]:
    """Stack K prompts (same token count) into the sam_decoder inputs of BUNDLE.md."""
    tokens = [p.tokens() for p in prompts]
    masks = [p.mask if p.mask is not None else np.zeros((1, mask_size, mask_size)) for p in prompts]
    return {
        "image_embeddings": np.ascontiguousarray(emb, dtype=np.float32),
        "point_coords": np.stack([c for c, _ in tokens]),
        "point_labels": np.stack([lab for _, lab in tokens]),
        "mask_input": np.stack(masks).astype(np.float32),
        "has_mask_input": np.array([p.mask is not None for p in prompts], dtype=np.float32),
    }


@torch.no_grad()
def torch_decode(model: Any, emb: torch.Tensor, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for ONE prompt through SamClip's PromptEncoder + MaskDecoder (SAM API) -> iou (1,M+1),
    low-res logits (1,M+1,4h,4w): index 0 from multimask_output=False, 1..M from multimask_output=True."""

    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor(a, dtype=torch.float32).unsqueeze(0)

    points = None if prompt.points is None else (t(prompt.points), t(prompt.labels))
    sparse, dense = model.prompt_encoder(points=points, boxes=t(prompt.box), masks=t(prompt.mask))
    pe = model.prompt_encoder.get_dense_pe()
    outs = [model.mask_decoder(emb, pe, sparse, dense, multimask_output=m) for m in (False, True)]
    low_res = torch.cat([outs[0][0], outs[1][0]], dim=1)
    iou = torch.cat([outs[0][1], outs[1][1]], dim=1)
    return iou, low_res


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random RGB uint8 (height, width, 3): an 8x8 colour grid upsampled, plus noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    noise = rng.integers(-20, 21, smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def random_prompt_sets(
    rng: np.random.Generator, input_size: tuple[int, int], mask_size: int
) -> dict[str, list[Prompt]]:
    """Prompt batches (one decoder call each; equal token count per batch) inside the resized image."""
    h, w = input_size

    def pts(n: int) -> tuple[np.ndarray, np.ndarray]:
        xy = rng.uniform(0, 1, (n, 2)) * [w - 1, h - 1]
        return xy.astype(np.float32), rng.integers(0, 2, n).astype(np.float32)

    def box() -> np.ndarray:
        x = np.sort(rng.uniform(0, w - 1, 2))
        y = np.sort(rng.uniform(0, h - 1, 2))
        return np.array([x[0], y[0], x[1], y[1]], dtype=np.float32)

    def mask() -> np.ndarray:
        coarse = rng.normal(0, 8, (1, 1, 4, 4))
        up = F.interpolate(torch.as_tensor(coarse), (mask_size, mask_size), mode="bilinear")
        return up[0].numpy().astype(np.float32)

    return {
        "points": [Prompt(*pts(2)) for _ in range(3)],
        "boxes": [Prompt(box=box()) for _ in range(4)],
        "mixed": [
            Prompt(*pts(2)),
            Prompt(*pts(1), box=box()),
            Prompt(*pts(2), mask=mask()),
            Prompt(*pts(1), box=box(), mask=mask()),
            Prompt(*pts(2)),
        ],
        "point+mask": [Prompt(*pts(1), mask=mask())],
    }


def _check_decoder(model, cfg, runner, comparison, emb: torch.Tensor, sizes, rng) -> None:
    input_size, original_size = sizes
    for prompts in random_prompt_sets(rng, input_size, cfg.mask_input_size).values():
        out = runner.decode(**decoder_feeds(emb.numpy(), prompts, cfg.mask_input_size))
        refs = [torch_decode(model, emb, p) for p in prompts]
        ref_iou = torch.cat([r[0] for r in refs])
        ref_low = torch.cat([r[1] for r in refs])
        ref_masks = upscale(ref_low, cfg.image_size)
        comparison.add("sam_decoder.iou_predictions", out["iou_predictions"], ref_iou.numpy())
        comparison.add("sam_decoder.low_res_masks", out["low_res_masks"], ref_low.numpy())
        got = upscale(torch.as_tensor(out["low_res_masks"]), cfg.image_size)
        comparison.add_masks(
            masks_at_original(got, input_size, original_size),
            masks_at_original(ref_masks, input_size, original_size),
        )


@torch.no_grad()
def run_parity(model, cfg, runner, comparison, samples: int = 2, seed: int = 0) -> list[list[int]]:
    """Run every graph on `samples` random non-square images (one encoder batch) and feed `comparison`.

    Each graph gets the SAME inputs as its PyTorch counterpart (errors do not compound across graphs).
    Returns the original (H, W) of each image.
    """
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    shapes = [
        (int(s * 0.75) + 7, int(s * 1.25) + 3) if i % 2 == 0 else (s + 5, int(s * 0.6))
        for i in range(samples)
    ]
    images = [random_image(rng, h, w) for h, w in shapes]
    batch = [preprocess(img, cfg) for img in images]
    x = torch.cat([b[0] for b in batch])
    emb, tokens = model.image_encoder(x)
    enc = runner.encode(x.numpy())
    comparison.add("encoder.image_embeddings", enc["image_embeddings"], emb.numpy())
    comparison.add("encoder.patch_tokens", enc["patch_tokens"], tokens.numpy())
    g2 = max(2, cfg.embed_grid * 7 // 16)  # a second grid, e.g. 28x28 (448 px) for vit_b
    tokens2 = torch.randn(1, g2, g2 + 1, tokens.shape[-1], generator=torch.Generator().manual_seed(seed))
    for toks in (tokens, tokens2 * tokens.std()):
        ref_img, ref_dense = model.clip_head(toks)
        out = runner.clip_head(toks.numpy())
        comparison.add("clip_head.image_embedding", out["image_embedding"], ref_img.numpy())
        comparison.add("clip_head.patch_embeddings", out["patch_embeddings"], ref_dense.numpy())
    ids = example_text_ids(4, cfg.text.context_length, seed=seed)
    out = runner.encode_text(ids.numpy())
    comparison.add("text_encoder.text_embedding", out["text_embedding"], model.text_encoder(ids).numpy())
    for i, (image, (_, input_size)) in enumerate(zip(images, batch, strict=True)):
        sizes = (input_size, image.shape[:2])
        _check_decoder(model, cfg, runner, comparison, emb[i : i + 1], sizes, rng)
    return [list(shape) for shape in shapes]
