"""Evaluation metrics against hand-computed values on toy inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from training.eval import tasks
from training.eval.metrics import binary_iou, confusion, miou_from_confusion, top1_accuracy


def test_confusion_and_miou_by_hand():
    pred = np.array([[0, 1], [1, 1]])
    gt = np.array([[0, 1], [0, 1]])
    conf = confusion(pred, gt, 2)
    assert conf.tolist() == [[1, 1], [0, 2]]
    miou, iou = miou_from_confusion(conf)
    assert iou.tolist() == pytest.approx([1 / 2, 2 / 3])  # class 0: 1 / (2 + 1 - 1); class 1: 2 / (2 + 3 - 2)
    assert miou == pytest.approx((1 / 2 + 2 / 3) / 2)
    gt_ignored = np.array([[0, 1], [255, 1]])
    assert confusion(pred, gt_ignored, 2).sum() == 3
    _, iou3 = miou_from_confusion(confusion(pred, gt, 3))
    assert np.isnan(iou3[2])  # absent class is not averaged


def test_top1_and_binary_iou():
    assert top1_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 px
    b[:2, :] = True  # 8 px, overlap 4
    assert binary_iou(a, b) == 0.5
    assert binary_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def _toy_coco() -> COCO:
    m1 = np.zeros((20, 20), np.uint8)
    m1[2:8, 2:8] = 1
    m2 = np.zeros((20, 20), np.uint8)
    m2[10:18, 10:18] = 1
    anns = []
    for i, m in enumerate((m1, m2)):
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        anns.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle,
                "area": int(m.sum()),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 20, "height": 20}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "x"}],
    }
    coco.createIndex()
    return coco


def _res(mask: np.ndarray, score: float) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return {"image_id": 1, "category_id": 1, "segmentation": rle, "score": score}


def test_coco_segm_ap_by_hand():
    coco = _toy_coco()
    gt1 = coco.annToMask(coco.loadAnns(1)[0]).astype(bool)
    gt2 = coco.annToMask(coco.loadAnns(2)[0]).astype(bool)
    assert tasks.coco_segm_ap(coco, [_res(gt1, 0.9), _res(gt2, 0.8)])["ap"] == pytest.approx(1.0)
    wrong = np.zeros((20, 20), bool)
    wrong[0:2, 15:20] = True
    # one true positive first, then a false positive: recall 0.5 at precision 1 -> 51 of 101 recall points
    got = tasks.coco_segm_ap(coco, [_res(gt1, 0.9), _res(wrong, 0.8)])
    assert got["ap"] == pytest.approx(51 / 101) and got["ap50"] == pytest.approx(51 / 101)


def test_classify_by_hand(tmp_path):
    colours = {
        "a": [(255, 0, 0), (250, 10, 0)],
        "b": [(0, 0, 255), (255, 0, 0)],
    }  # one "b" image looks like "a"
    for name, cs in colours.items():
        (tmp_path / name).mkdir()
        for i, c in enumerate(cs):
            Image.fromarray(np.full((8, 8, 3), c, np.uint8)).save(tmp_path / name / f"{i}.png")

    def enc(images):
        return torch.nn.functional.normalize(
            torch.tensor(np.stack([im.reshape(-1, 3).mean(0) for im in images]), dtype=torch.float32), dim=-1
        )

    def text(names):
        return torch.tensor([[1.0, 0, 0] if n == "a" else [0, 0, 1.0] for n in names])

    assert tasks.classify(enc, text, tmp_path)["top1"] == 0.75


class _FakeRunner:
    """Dense features on a 2x2 grid: one-hot of classes [[0, 1], [2, 2]] (0 = background)."""

    def text_classes(self, names):
        return torch.eye(len(names))

    def prepare(self, image, size, square=True):
        return None

    def encode(self, prep):
        grid = torch.tensor([[0, 1], [2, 2]])
        return None, torch.nn.functional.one_hot(grid, 3).float()


def test_semseg_protocol_by_hand(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.json").write_text(json.dumps(["red circle", "blue square"]))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "0.png")
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [1, 1, 2, 2]], np.uint8)
    Image.fromarray(label).save(tmp_path / "labels" / "0.png")
    # prediction after linear upscaling keeps the quadrants: [[0,0,1,1],[0,0,1,1],[2,2,2,2],[2,2,2,2]]
    got = tasks.semseg(_FakeRunner(), tmp_path, 4)
    ious = [4 / 4, 4 / 6, 6 / 8]  # bg: 4/4; class 1: inter 4, union 4+6-4; class 2: inter 6, union 6+8-6
    assert got["per_class_iou"]["blue square"] == pytest.approx(ious[2])
    assert got["miou"] == pytest.approx(np.mean(ious))
