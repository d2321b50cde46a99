"""The demo's tiny CLIP teacher: an OpenCLIP ``CLIP`` trained contrastively on the shapes dataset (CPU).

Architecture: a custom OpenCLIP model config (registered with ``open_clip.add_model_config``): a small
ModifiedResNet image tower and a text tower identical in shape to SAM-CLIP's (so it can be copied into the
student), trained with open_clip's CLIP BPE tokenizer.

Training pairs, each step (:func:`clip_batch`): from ``scenes_per_step`` multi-object scenes and
``singles_per_step`` single-object scenes, every instance crop (random context margin, so objects appear at
many scales), the whole scene, and the object-free (inpainted) scene; captions are raw ("red circle"),
"a red circle" or one of the 80 OpenAI templates, and name the colour + shape or the shape alone. Losses:

- multi-positive InfoNCE (:func:`training.losses.contrastive_loss`) between images and captions plus one caption
  of every concept; "background" is NOT a negative for object images (it is the "none of these" text, below);
- the "background" calibration hinge (:func:`training.losses.background_calibration_loss`): an object image
  scores its own class text > "background" + 0.3 and "background" > any other class text + 0.1, so the
  service's rule (a text against "background") separates the named object from the other objects; an
  object-free image scores "background" above every class text by 0.1 to 0.3, so both sides' margins are alike
  (measured without this cap: objects 0.22, backgrounds 0.68, which moved the text-vs-background boundary
  of mixed object/background patches deep into the objects).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from training.crops import instance_crops
from training.data.datasets import SA1BDataset
from training.data.shapes import CLASSES, SHAPES
from training.eval.templates import TEMPLATES, tokenize
from training.losses import background_calibration_loss, contrastive_loss
from training.train import lr_factor

CLASS_KEYS = (*CLASSES, *SHAPES, "background")
CALIB_KEYS = (*CLASSES, "background")  # texts of the calibration hinge ("background" last)


@dataclass(frozen=True)
class ClipTeacherRecipe:
    """Hyper-parameters of the demo CLIP teacher (the defaults made the committed demo bundle)."""

    steps: int = 1500
    scenes_per_step: int = 10  # multi-object scenes per step (each: its crops, the scene, its background)
    singles_per_step: int = 10  # single-object scenes per step (likewise)
    lr: float = 3e-3
    weight_decay: float = 0.1
    image_size: int = 64
    crop_margin: tuple[float, float] = (0.15, 1.0)  # context around a crop, per side, as a box fraction
    calib_weight: float = 5.0
    calib_margin: float = 0.1
    calib_own_margin: float = 0.3  # object image: own text beats "background" by this much
    calib_background_cap: float = 0.3  # background image: "background" beats each class text by at most this
    logit_scale_init: float = 30.0  # sharper start than CLIP's 1/0.07: ~13 concepts only
    seed: int = 0


def clip_model_config(model: str, image_size: int = 64) -> dict:
    """OpenCLIP model config whose text tower matches SAM-CLIP config `model`'s text tower."""
    from model_export.config import load_config

    t = load_config(model).text
    vision = {"image_size": image_size, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32}
    text = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
    }
    return {"embed_dim": t.embed_dim, "vision_cfg": vision, "text_cfg": text}


def say(rng: random.Random, name: str) -> str:
    """A caption for `name`: raw ("red circle"), "a red circle", or one of the 80 templates."""
    r = rng.random()
    return name if r < 0.2 else f"a {name}" if r < 0.4 else rng.choice(TEMPLATES).format(name)


def encode_text_prefix(clip: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(ids)`` computed on the shortest prefix that holds every sequence's EOT token.

    Same result (causal attention: no token after a sequence's EOT reaches it; the EOT token has the highest
    id, as open_clip's argmax pooling assumes), a fraction of the cost for short captions. ids (N, 77) int64
    -> (N, D). Falls back to ``encode_text`` for text towers of another kind."""
    if getattr(clip, "text_pool_type", "") != "argmax" or not isinstance(clip.text_projection, torch.Tensor):
        return clip.encode_text(ids)
    n = int(ids.argmax(-1).max()) + 1
    ids = ids[:, :n]
    x = clip.token_embedding(ids) + clip.positional_embedding[:n]
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ clip.text_projection


def _scene_pair(meta: list[tuple[str, str]]) -> tuple[str, set[str], int]:
    """Caption key, accepted keys and calibration class of a whole scene with objects `meta`."""
    if len(meta) == 1:
        key = f"{meta[0][0]} {meta[0][1]}"
        return key, {key, meta[0][1]}, CLASSES.index(key)
    key = " and ".join(f"a {c} {s}" for c, s in meta)
    return key, {key}, -1


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
    return out.round().to(torch.uint8)


def clip_batch(
    ds: SA1BDataset, idx: list[int], rng: random.Random, size: int, margin: tuple[float, float] = (0.3, 0.3)
):
    """Training pairs from records `idx` of `ds` (built with ``backgrounds=True``).

    Returns images (N, 3, size, size) uint8, captions (N str), accept-sets (the keys that truly describe each
    image), caption keys, and calibration targets (N,) int64: class index, len(CLASSES) for backgrounds, -1 for
    scenes of several objects."""
    images, caps, accept, keys, cls = [], [], [], [], []
    for i in idx:
        item = ds[i]
        masks = item["masks"][item["valid"]]
        anns = ds.annotations(i)
        meta = [(anns[a]["color"], anns[a]["shape"]) for a in item["ann_index"][item["valid"]].tolist()]
        crops = instance_crops(item["image"], masks, size, margin=rng.uniform(*margin))
        for crop, (color, shape) in zip(crops, meta, strict=True):
            key = f"{color} {shape}" if rng.random() < 0.75 else shape
            images.append(crop), caps.append(say(rng, key)), keys.append(key)
            accept.append({f"{color} {shape}", shape}), cls.append(CLASSES.index(f"{color} {shape}"))
        key, acc, c = _scene_pair(meta)
        images.append(_resize(item["image"], size)), caps.append(say(rng, key)), keys.append(key)
        accept.append(acc), cls.append(c)
        images.append(_resize(item["background"], size)), caps.append(say(rng, "background"))
        keys.append("background"), accept.append({"background"}), cls.append(len(CLASSES))
    return torch.stack(images), caps, accept, keys, torch.tensor(cls)


def _pairs(sets: list[tuple[SA1BDataset, int]], rng: random.Random, recipe: ClipTeacherRecipe):
    """One step's pairs drawn from every (dataset, count) in `sets`, concatenated."""
    parts = [
        clip_batch(ds, [rng.randrange(len(ds)) for _ in range(n)], rng, recipe.image_size, recipe.crop_margin)
        for ds, n in sets
        if n > 0
    ]
    images = torch.cat([p[0] for p in parts])
    caps, accept, keys = ([x for p in parts for x in p[k]] for k in (1, 2, 3))
    return images, caps, accept, keys, torch.cat([p[4] for p in parts])


def teacher_loss(clip, teacher, batch, rng: random.Random, recipe: ClipTeacherRecipe):
    """(total, calibration) loss of one step's pairs (see module docstring)."""
    images, caps, accept, keys, cls = batch
    concepts = [*keys, *CLASS_KEYS]
    prompts = [say(rng, k) for k in CLASS_KEYS]  # every concept's text in every step (extra negatives)
    pos = torch.tensor([[k in acc for k in concepts] for acc in accept])
    is_object = torch.tensor([k != "background" for k in keys])
    ignore = is_object[:, None] & torch.tensor([k == "background" for k in concepts])[None]
    img = F.normalize(clip.encode_image(teacher.preprocess(images)), dim=-1)
    txt = F.normalize(encode_text_prefix(clip, tokenize(caps + prompts)), dim=-1)
    calib_txt = txt[len(caps) + torch.tensor([CLASS_KEYS.index(k) for k in CALIB_KEYS])]
    keep = cls >= 0
    calib = background_calibration_loss(
        img[keep] @ calib_txt.t(),
        cls[keep],
        len(CLASSES),
        recipe.calib_margin,
        recipe.calib_own_margin,
        recipe.calib_background_cap,
    )
    scale = clip.logit_scale.exp().clamp(max=100)
    return contrastive_loss(img, txt, scale, pos, ignore) + recipe.calib_weight * calib, calib


def train_clip_teacher(scenes: Path, singles: Path | None, out: Path, model: str, recipe: ClipTeacherRecipe):
    """Train the tiny OpenCLIP teacher on SA-1B-style `scenes` (+ single-object `singles`);
    returns (model config JSON path, weights path)."""
    from training.teachers import ClipTeacher

    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    cfg_path = out / "demo-clip.json"
    cfg_path.write_text(json.dumps(clip_model_config(model, recipe.image_size), indent=2))
    open_clip.add_model_config(cfg_path)
    clip = open_clip.create_model("demo-clip")
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(recipe.logit_scale_init))
    teacher = ClipTeacher(clip, recipe.image_size)
    for p in clip.parameters():
        p.requires_grad_(True)
    clip.train()
    opt = torch.optim.AdamW(clip.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    sets = [(SA1BDataset(scenes, 128, 8, recipe.seed, backgrounds=True), recipe.scenes_per_step)]
    if singles is not None:
        sets.append((SA1BDataset(singles, 128, 8, recipe.seed, backgrounds=True), recipe.singles_per_step))
    log = open(out / "clip_teacher_log.jsonl", "w")  # noqa: SIM115
    for step in (bar := tqdm(range(recipe.steps), desc="teacher CLIP")):
        opt.param_groups[0]["lr"] = recipe.lr * lr_factor(step, recipe.steps, max(1, recipe.steps // 20))
        loss, calib = teacher_loss(clip, teacher, _pairs(sets, rng, recipe), rng, recipe)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", calib=f"{calib.item():.3f}")
            log.write(json.dumps({"step": step, "loss": loss.item(), "calib": calib.item()}) + "\n")
    log.close()
    weights = out / "demo_clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    return cfg_path, weights
