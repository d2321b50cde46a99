"""The demo CLIP teacher: prefix text encoding, training pairs, masked InfoNCE, and a few training steps."""

from __future__ import annotations

import json
import random

import open_clip
import pytest
import torch

from training.data.datasets import SA1BDataset
from training.data.shapes import CLASSES, SHAPES
from training.demo_clip import (
    ClipTeacherRecipe,
    clip_batch,
    encode_text_prefix,
    teacher_loss,
    train_clip_teacher,
)
from training.eval.templates import tokenize
from training.losses import contrastive_loss
from training.teachers import ClipTeacher


@pytest.fixture(scope="module")
def clip_model(teacher_files):
    open_clip.add_model_config(teacher_files["clip_config"])
    return open_clip.create_model("demo-clip", pretrained=str(teacher_files["clip"]))


def test_prefix_text_encoding_equals_open_clip(clip_model):
    ids = tokenize(["red circle", "a photo of the hard to see blue square.", "background", ""])
    with torch.no_grad():
        full = clip_model.encode_text(ids)
        short = encode_text_prefix(clip_model, ids)
    assert torch.allclose(short, full, atol=1e-5), (short - full).abs().max()


def test_ignored_pairs_are_neither_positive_nor_negative():
    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    pos, scale = torch.eye(3, 4, dtype=torch.bool), torch.tensor(10.0)
    ignore = torch.zeros(3, 4, dtype=torch.bool)
    ignore[:, 3] = True
    without = contrastive_loss(image, text[:3], scale, pos[:, :3])
    assert float(contrastive_loss(image, text, scale, pos, ignore)) == pytest.approx(float(without))
    moved = text.clone()
    moved[3] = image[0]  # text 3 now matches image 0 perfectly: as a negative it would raise the loss
    assert float(contrastive_loss(image, moved, scale, pos, ignore)) == pytest.approx(float(without))
    assert contrastive_loss(image, moved, scale, pos) > contrastive_loss(image, text, scale, pos)


def test_clip_batch_pairs(shapes_data):
    ds = SA1BDataset(shapes_data, 128, 8, backgrounds=True)
    images, caps, accept, keys, cls = clip_batch(ds, [0, 1], random.Random(0), 64, (0.2, 0.8))
    n_obj = sum(len(ds.annotations(i)) for i in (0, 1))
    assert images.shape == (n_obj + 4, 3, 64, 64) and images.dtype == torch.uint8
    assert len(caps) == len(accept) == len(keys) == len(cls) == n_obj + 4
    assert keys.count("background") == 2 and int((cls == len(CLASSES)).sum()) == 2
    for key, acc, c in zip(keys, accept, cls.tolist(), strict=True):
        assert key in acc
        if c >= 0 and key != "background":  # an object crop or a one-object scene: colour + shape and shape
            assert acc == {CLASSES[c], CLASSES[c].split()[1]} and CLASSES[c].split()[1] in SHAPES


def test_background_items_have_no_objects(shapes_data):
    ds = SA1BDataset(shapes_data, 128, 8, backgrounds=True)
    item = ds[0]
    assert ds[0]["background"] is item["background"]  # inpainted once per record
    img, back = item["image"].float(), item["background"].float()
    for m in item["masks"][item["valid"]]:
        obj_colour = img[:, m].mean(1)
        assert (back[:, m].mean(1) - obj_colour).abs().max() > 40  # the object's colour is gone
    outside = ~item["masks"][item["valid"]].any(0)
    assert (back[:, outside] - img[:, outside]).abs().mean() < 5  # the rest is untouched (but the seam)


def test_a_few_teacher_steps_lower_the_loss(clip_model, shapes_data):
    teacher = ClipTeacher(clip_model, 64)
    for p in clip_model.parameters():
        p.requires_grad_(True)
    clip_model.train()
    recipe = ClipTeacherRecipe(steps=6, lr=2e-3)
    opt = torch.optim.AdamW(clip_model.parameters(), lr=recipe.lr)
    ds = SA1BDataset(shapes_data, 128, 8, backgrounds=True)
    batch = clip_batch(ds, list(range(6)), random.Random(0), 64)
    losses = []
    for _ in range(6):
        loss, _ = teacher_loss(clip_model, teacher, batch, random.Random(1), recipe)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses


def test_train_clip_teacher_writes_a_loadable_open_clip_model(shapes_data, tmp_path):
    cfg, weights = train_clip_teacher(shapes_data, shapes_data, tmp_path, "demo", ClipTeacherRecipe(steps=2))
    assert json.loads(cfg.read_text())["vision_cfg"]["image_size"] == 64
    open_clip.add_model_config(cfg)
    model = open_clip.create_model("demo-clip", pretrained=str(weights))
    assert model.encode_text(tokenize(["red circle"])).shape == (1, 64)
    assert len((tmp_path / "clip_teacher_log.jsonl").read_text().splitlines()) == 2
