"""Procedural shapes dataset: determinism, masks, on-disk layouts, datasets and the per-resolution sampler."""

from __future__ import annotations

import json

import numpy as np
import torch

from training.data.datasets import ImageFolderImages, SA1BDataset
from training.data.sampler import ResolutionBatchSampler
from training.data.shapes import (
    CLASSES,
    COLORS,
    SHAPES,
    decode_rle,
    make_scene,
    read_sa1b_record,
    write_imagefolder,
    write_semseg,
)


def test_scene_is_deterministic_and_masks_match_pixels():
    a, b = make_scene(5), make_scene(5)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, make_scene(6).image)
    union = np.zeros(a.image.shape[:2], int)
    for inst in a.instances:
        assert inst.shape in SHAPES and inst.color in COLORS
        union += inst.mask
        colour = a.image[inst.mask].mean(0)
        assert int(np.argmax(colour)) == list(COLORS).index(inst.color)  # red/green/blue channel dominates
    assert union.max() <= 1  # instances never overlap


def test_caption_names_every_object():
    scene = make_scene(3, max_objects=4, min_objects=3)
    for inst in scene.instances:
        assert f"a {inst.color} {inst.shape}" in scene.caption()


def test_sa1b_layout_round_trips(shapes_data):
    image, anns = read_sa1b_record(shapes_data / "sa_000000.json")
    scene = make_scene(0)  # write_sa1b(seed=0) uses scene seed 0 for the first image
    assert np.array_equal(image, scene.image)
    assert [a["caption"] for a in anns] == [i.caption for i in scene.instances]
    for a, inst in zip(anns, scene.instances, strict=True):
        assert np.array_equal(a["mask"], inst.mask)
        assert np.array_equal(decode_rle(a["segmentation"]), inst.mask)
    coco = json.loads((shapes_data / "coco_instances.json").read_text())
    assert len(coco["images"]) == 12 and coco["annotations"]


def test_imagefolder_and_semseg_layouts(tmp_path):
    write_imagefolder(tmp_path / "cls", 2, seed=0)
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == sorted(SHAPES)
    write_semseg(tmp_path / "seg", 3, seed=0)
    from PIL import Image

    label = np.asarray(Image.open(tmp_path / "seg" / "labels" / "00000.png"))
    assert label.max() <= len(CLASSES) and label.max() > 0
    assert json.loads((tmp_path / "seg" / "classes.json").read_text()) == list(CLASSES)


def test_datasets_shapes(shapes_data):
    img = ImageFolderImages(shapes_data)[(0, 96)]
    assert img.shape == (3, 96, 96) and img.dtype == torch.uint8
    item = SA1BDataset(shapes_data, 128, 6)[0]
    assert item["image"].shape == (3, 128, 128)
    assert item["masks"].shape == (6, 128, 128) and item["valid"].sum() >= 1
    assert not item["masks"][~item["valid"]].any()


def test_resolution_sampler_one_resolution_per_batch_and_disjoint_ranks():
    res = (64, 96, 128)
    ranks = [iter(ResolutionBatchSampler(40, 8, res, seed=3, rank=r, world=2)) for r in range(2)]
    seen = set()
    for _ in range(20):
        b0, b1 = next(ranks[0]), next(ranks[1])
        assert len({r for _, r in b0 + b1}) == 1  # one resolution per step, same on every rank
        assert len(b0) == len(b1) == 4
        assert not {i for i, _ in b0} & {i for i, _ in b1}
        seen.add(b0[0][1])
    assert seen == set(res)
