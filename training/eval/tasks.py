"""The seed's evaluations on local data folders (layouts as written by training.data.shapes).

- classify: zero-shot top-1 with the 80 OpenAI templates on an ImageFolder-style set (class = folder name).
- semseg: zero-shot semantic segmentation (seed protocol): image resized to res×res, CLIP-head patch
  features vs per-class template-ensembled text embeddings ("background" is class 0), linear upscaling of the
  logits to the image size, argmax, mIoU over ``images/*.png`` + ``labels/*.png``.
- refine: Table 4: one encoder pass at S; CLIP-head coarse class map; per predicted class, points
  importance-sampled from its probability + the coarse mask as mask prompt -> SAM decoder -> fine masks
  composed into a label map; mIoU.
- instseg: box-prompted instance segmentation on COCO-format annotations with GT boxes as prompts (the seed
  uses ViTDet boxes): pycocotools COCOeval (segm) AP, plus mean IoU of each box's mask with its GT mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from training.data.datasets import list_images
from training.eval.metrics import binary_iou, confusion, miou_from_confusion, top1_accuracy
from training.eval.runner import SamClipRunner


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def classify(encode_images, text_emb_fn, data: Path, batch: int = 32) -> dict:
    """encode_images: list of (H, W, 3) uint8 -> (B, D); text_emb_fn: class names -> (C, D)."""
    classes = sorted(p.name for p in Path(data).iterdir() if p.is_dir())
    text = text_emb_fn(classes)
    preds, targets = [], []
    for k, name in enumerate(classes):
        files = list_images(Path(data) / name)
        for i in range(0, len(files), batch):
            emb = encode_images([_rgb(f) for f in files[i : i + batch]])
            preds += (emb @ text.t()).argmax(1).tolist()
            targets += [k] * len(files[i : i + batch])
    return {"top1": top1_accuracy(np.array(preds), np.array(targets)), "n": len(targets), "classes": classes}


def _semseg_files(data: Path) -> tuple[list[str], list[tuple[Path, Path]]]:
    classes = ["background", *json.loads((Path(data) / "classes.json").read_text())]
    pairs = [(p, Path(data) / "labels" / p.name) for p in list_images(Path(data) / "images")]
    return classes, pairs


@torch.no_grad()
def semseg(runner: SamClipRunner, data: Path, resolution: int) -> dict:
    """CLIP-head-only zero-shot semantic segmentation mIoU at `resolution` (square resize)."""
    classes, pairs = _semseg_files(data)
    text = runner.text_classes(classes)
    conf = np.zeros((len(classes),) * 2, np.int64)
    for img_path, lab_path in pairs:
        image, label = _rgb(img_path), np.asarray(Image.open(lab_path))
        _, dense = runner.encode(runner.prepare(image, resolution, square=True))
        logits = torch.einsum("hwd,cd->chw", dense, text)[None]
        up = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)[0]
        conf += confusion(up.argmax(0).numpy(), label, len(classes))
    miou, iou = miou_from_confusion(conf)
    return {"miou": miou, "per_class_iou": dict(zip(classes, np.nan_to_num(iou).tolist(), strict=True))}


@torch.no_grad()
def refine_semseg(runner: SamClipRunner, data: Path, n_points: int = 8, seed: int = 0) -> dict:
    """CLIP+SAM heads (seed Table 4) at the model's input size S; returns mIoU."""
    classes, pairs = _semseg_files(data)
    text = runner.text_classes(classes)
    scale = runner.model.logit_scale.exp()
    conf = np.zeros((len(classes),) * 2, np.int64)
    gen = torch.Generator().manual_seed(seed)
    for img_path, lab_path in pairs:
        image, label = _rgb(img_path), np.asarray(Image.open(lab_path))
        prep = runner.prepare(image)
        emb, dense = runner.encode(prep)
        prob = (scale * torch.einsum("hwd,cd->chw", dense, text)).softmax(0)
        coarse = prob.argmax(0)
        pred = np.zeros(label.shape, np.uint8)
        order = sorted(set(coarse.unique().tolist()) - {0}, key=lambda c: float(prob[c][coarse == c].mean()))
        for c in order:
            p = prob[c] * (coarse == c)
            mask = runner.postprocess(runner.refine(prep, emb, p, n_points, gen), prep)[0]
            pred[mask] = c
        conf += confusion(pred, label, len(classes))
    miou, iou = miou_from_confusion(conf)
    return {"miou": miou, "per_class_iou": dict(zip(classes, np.nan_to_num(iou).tolist(), strict=True))}


@torch.no_grad()
def instseg(runner: SamClipRunner, data: Path, ann_file: str = "coco_instances.json") -> dict:
    """Box-prompted instance segmentation: COCO segm AP / AP50 and mean box-prompt mask IoU."""
    coco = COCO(str(Path(data) / ann_file))
    results, ious = [], []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        if not anns:
            continue
        boxes = np.array(
            [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in anns
            ]
        )
        masks, scores = runner.box_masks(_rgb(Path(data) / info["file_name"]), boxes)
        for a, m, s in zip(anns, masks, scores, strict=True):
            ious.append(binary_iou(m, coco.annToMask(a).astype(bool)))
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {"image_id": img_id, "category_id": a["category_id"], "segmentation": rle, "score": float(s)}
            )
    return {**coco_segm_ap(coco, results), "box_miou": float(np.mean(ious)) if ious else 0.0, "n": len(ious)}


def coco_segm_ap(coco: COCO, results: list[dict]) -> dict:
    """COCOeval (iouType="segm") -> {"ap": AP@[.5:.95], "ap50": AP@.5}; 0 when there are no results."""
    if not results:
        return {"ap": 0.0, "ap50": 0.0}
    ev = COCOeval(coco, coco.loadRes(results), iouType="segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"ap": float(max(ev.stats[0], 0.0)), "ap50": float(max(ev.stats[1], 0.0))}
