"""The demo's tiny SAM teacher, trained on the shapes dataset (CPU); the CLIP teacher is training/demo_clip.py.

Tiny SAM: our SAM modules (``model_export`` config ``demo``), trained from scratch for promptable segmentation
with box, point and point+coarse-mask prompts (SAM's losses: BCE + dice on the best output, IoU regression).
Saved in the official SAM key layout (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) as
safetensors, so ``load_sam_checkpoint`` reads it like ``sam_vit_b_01ec64.pth``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from model_export.build import build_model
from model_export.checkpoint import SAM_PREFIXES
from training.data.datasets import SA1BDataset
from training.data.sampler import make_loader
from training.losses import sam_supervised_loss
from training.sam_ops import batch_prompts, decode_all, lowres_targets
from training.train import lr_factor


def train_sam_teacher(
    data: Path, out: Path, model: str, steps: int, batch: int, lr: float, seed: int
) -> Path:
    """Train a SAM of architecture `model` on SA-1B-style `data`; returns the SAM-layout safetensors path."""
    torch.manual_seed(seed)
    sam = build_model(model, seed=seed).train()
    params = [p for n, p in sam.named_parameters() if n.startswith(SAM_PREFIXES)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ds = SA1BDataset(data, sam.config.image_size, masks_per_image=4, seed=seed)
    it = make_loader(ds, batch, (ds.size,), seed, 0, 1)
    gen = torch.Generator().manual_seed(seed)
    log = open(out / "sam_teacher_log.jsonl", "w")  # noqa: SIM115
    for step in (bar := tqdm(range(steps), desc="teacher SAM")):
        opt.param_groups[0]["lr"] = lr * lr_factor(step, steps, steps // 20)
        b = next(it)
        emb, _ = sam.image_encoder(sam.normalize(b["image"]))
        losses = []
        for i, prompts, masks in batch_prompts(b["masks"], b["valid"], emb.shape[-1], gen):
            logits, iou = decode_all(sam, emb[i : i + 1], prompts)
            losses.append(sam_supervised_loss(logits, iou, lowres_targets(masks, logits.shape[-1])))
        loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(json.dumps({"step": step, "loss": loss.item()}) + "\n")
    log.close()
    path = out / "sam_demo.safetensors"
    save_file(
        {k: v.contiguous() for k, v in sam.state_dict().items() if k.startswith(SAM_PREFIXES)}, str(path)
    )
    return path
