"""Train the demo's small teachers on the shapes dataset (CPU).

- Tiny SAM: our SAM modules (``model_export`` config ``demo``), trained from scratch for promptable
  segmentation with box, point and point+coarse-mask prompts (SAM's losses: BCE + dice on the best output,
  IoU regression). Saved in the official SAM key layout (``image_encoder.*``, ``prompt_encoder.*``,
  ``mask_decoder.*``) as safetensors, so ``load_sam_checkpoint`` reads it like ``sam_vit_b_01ec64.pth``.
- Tiny CLIP: an OpenCLIP ``CLIP`` (custom model config JSON, registered with ``open_clip.add_model_config``)
  trained contrastively with the CLIP BPE tokenizer on captions of whole scenes, instance crops and
  object-free backgrounds (captions in the 80 OpenAI templates or raw), plus a hinge that makes "background"
  score between an object's own caption and other objects' captions (so "text vs background" decisions work).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from model_export.build import build_model
from model_export.checkpoint import SAM_PREFIXES
from training.crops import instance_crops, remove_objects
from training.data.datasets import SA1BDataset
from training.data.sampler import make_loader
from training.data.shapes import CLASSES, COLORS, SHAPES
from training.eval.templates import TEMPLATES, tokenize
from training.losses import background_calibration_loss, contrastive_loss, sam_supervised_loss
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


def clip_model_config(model: str) -> dict:
    """OpenCLIP model config whose text tower matches SAM-CLIP config `model`'s text tower."""
    from model_export.config import load_config

    t = load_config(model).text
    vision = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32}  # ModifiedResNet
    text = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
    }
    return {"embed_dim": t.embed_dim, "vision_cfg": vision, "text_cfg": text}


CLASS_KEYS = (*CLASSES, *SHAPES, "background")


def _say(rng: random.Random, name: str) -> str:
    """A caption for `name`: raw ("red circle"), "a red circle", or one of the 80 templates."""
    r = rng.random()
    return name if r < 0.2 else f"a {name}" if r < 0.4 else rng.choice(TEMPLATES).format(name)


def clip_batch(ds: SA1BDataset, idx: list[int], rng: random.Random, size: int):
    """Images (N, 3, size, size) uint8, captions, accept-sets (keys each image is truly described by),
    caption keys, and calibration targets (class index or -1 for scenes with several objects)."""
    images, caps, accept, keys, cls = [], [], [], [], []
    bg = len(CLASSES)
    for i in idx:
        item = ds[i]
        masks = item["masks"][item["valid"]]
        anns = ds.annotations(i)
        meta = [(anns[a]["color"], anns[a]["shape"]) for a in item["ann_index"][item["valid"]].tolist()]
        crops = instance_crops(item["image"], masks, size)
        for crop, (color, shape) in zip(crops, meta, strict=True):
            key = f"{color} {shape}" if rng.random() < 0.75 else shape
            images.append(crop), caps.append(_say(rng, key)), keys.append(key)
            accept.append({f"{color} {shape}", shape}), cls.append(CLASSES.index(f"{color} {shape}"))
        scene = torch.nn.functional.interpolate(
            item["image"][None].float(), size=(size, size), mode="bilinear", antialias=True
        )[0]
        if len(meta) == 1:
            key = f"{meta[0][0]} {meta[0][1]}"
            acc, c = {key, meta[0][1]}, CLASSES.index(key)
        else:
            key = " and ".join(f"a {c} {s}" for c, s in meta)
            acc, c = {key}, -1
        images.append(scene.round().to(torch.uint8)), caps.append(_say(rng, key)), keys.append(key)
        accept.append(acc), cls.append(c)
        back = remove_objects(item["image"], masks)
        back = torch.nn.functional.interpolate(
            back[None].float(), size=(size, size), mode="bilinear", antialias=True
        )[0]
        (
            images.append(back.round().to(torch.uint8)),
            caps.append(_say(rng, "background")),
            keys.append("background"),
        )
        accept.append({"background"}), cls.append(bg)
    return torch.stack(images), caps, accept, keys, torch.tensor(cls)


def train_clip_teacher(
    data: Path, out: Path, model: str, steps: int, images_per_step: int, lr: float, seed: int
):
    """Train the tiny OpenCLIP teacher; returns (model config JSON path, weights path)."""
    from training.teachers import ClipTeacher

    torch.manual_seed(seed)
    rng = random.Random(seed)
    cfg_path = out / "demo-clip.json"
    cfg_path.write_text(json.dumps(clip_model_config(model), indent=2))
    open_clip.add_model_config(cfg_path)
    clip = open_clip.create_model("demo-clip").train()
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(30.0))  # sharper start than CLIP's 1/0.07: ~13 concepts only
    teacher = ClipTeacher(clip, 64)
    for p in clip.parameters():
        p.requires_grad_(True)
    clip.train()
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.1)
    ds = SA1BDataset(data, 128, masks_per_image=8, seed=seed)
    class_ids = tokenize([*CLASSES, "background"])
    log = open(out / "clip_teacher_log.jsonl", "w")  # noqa: SIM115
    for step in (bar := tqdm(range(steps), desc="teacher CLIP")):
        opt.param_groups[0]["lr"] = lr * lr_factor(step, steps, steps // 20)
        idx = [rng.randrange(len(ds)) for _ in range(images_per_step)]
        images, caps, accept, keys, cls = clip_batch(ds, idx, rng, 64)
        prompts = [_say(rng, k) for k in CLASS_KEYS]  # every class's text in every step (extra negatives)
        pos = torch.tensor([[k in acc for k in [*keys, *CLASS_KEYS]] for acc in accept])
        img = torch.nn.functional.normalize(clip.encode_image(teacher.preprocess(images)), dim=-1)
        txt = torch.nn.functional.normalize(clip.encode_text(tokenize(caps + prompts)), dim=-1)
        cls_txt = torch.nn.functional.normalize(clip.encode_text(class_ids), dim=-1)
        keep = cls >= 0
        calib = background_calibration_loss(img[keep] @ cls_txt.t(), cls[keep], len(CLASSES))
        loss = contrastive_loss(img, txt, clip.logit_scale.exp().clamp(max=100), pos) + calib
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", calib=f"{calib.item():.3f}")
            log.write(json.dumps({"step": step, "loss": loss.item(), "calib": calib.item()}) + "\n")
    log.close()
    weights = out / "demo_clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    return cfg_path, weights


__all__ = ["train_sam_teacher", "train_clip_teacher", "clip_model_config", "COLORS", "SHAPES"]
