"""Procedural "shapes" dataset: coloured circles, squares and triangles on plain or textured backgrounds.

Everything is deterministic given a seed. A scene is an RGB uint8 image (H, W, 3) plus a list of instances,
each with a binary mask (H, W) bool (pixel (row, col) convention), a shape name, a colour name and a caption
such as "a red circle". Instances never overlap, so masks are disjoint and every mask is fully visible.

On-disk layouts written here:
- SA-1B style (SAM distillation, instance eval): ``DIR/<id>.png`` + ``DIR/<id>.json`` with
  ``{"image": {...}, "annotations": [{"id", "segmentation": COCO RLE, "bbox": [x, y, w, h], "area",
  "shape", "color", "caption", "category_id"}]}``; plus ``DIR/coco_instances.json`` (COCO format, for
  pycocotools) and ``DIR/captions.json`` (image-level captions, for CLIP teacher training).
- ImageFolder style (zero-shot classification): ``DIR/<shape>/<id>.png`` with one shape per image.
- Semantic segmentation: ``DIR/images/<id>.png`` + ``DIR/labels/<id>.png`` (uint8 class index; 0 =
  background, i = ``classes[i - 1]``) + ``DIR/classes.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 60, 220),
}
CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)


@dataclass
class Instance:
    """One object. mask: (H, W) bool; shape in SHAPES; color in COLORS."""

    mask: np.ndarray
    shape: str
    color: str

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape}"


@dataclass
class Scene:
    """image: (H, W, 3) uint8 RGB; instances in drawing order."""

    image: np.ndarray
    instances: list[Instance]

    def caption(self) -> str:
        parts = [i.caption for i in self.instances]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted plain colour, noise, stripes or checkerboard; (size, size, 3) uint8."""
    base = rng.integers(90, 200, size=3).astype(np.float32)
    base = base.mean() + (base - base.mean()) * 0.35  # low saturation so shapes stay distinct
    kind = rng.integers(0, 4)
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == 1:
        img += rng.normal(0, 18, size=(size, size, 1))
    elif kind == 2:
        period = rng.integers(6, 20)
        img += 25 * np.sign(np.sin((xx + yy * rng.uniform(-1, 1)) * 2 * np.pi / period))[..., None]
    elif kind == 3:
        cell = rng.integers(8, 24)
        img += 22 * (((xx // cell) + (yy // cell)) % 2 * 2 - 1)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Binary (size, size) bool mask of a shape centred at (cx, cy) with circumradius r."""
    canvas = np.zeros((size, size), np.uint8)
    if shape == "circle":
        cv2.circle(canvas, (round(cx), round(cy)), round(r), 1, -1, lineType=cv2.LINE_8)
    else:
        n = 4 if shape == "square" else 3
        t = angle + np.arange(n) * 2 * np.pi / n
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).round().astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8)
    return canvas.astype(bool)


def make_scene(
    seed: int, size: int = 128, min_objects: int = 1, max_objects: int = 4, shapes: tuple[str, ...] = SHAPES
) -> Scene:
    """Render one scene deterministically from `seed`; objects' circumradius is 9%..22% of `size`."""
    rng = np.random.default_rng(seed)
    img = _background(rng, size)
    occupied = np.zeros((size, size), bool)
    instances: list[Instance] = []
    n = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(60):
        if len(instances) == n:
            break
        shape = str(rng.choice(shapes))
        color = str(rng.choice(list(COLORS)))
        r = rng.uniform(0.09, 0.22) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        m = _shape_mask(shape, size, cx, cy, r, rng.uniform(0, 2 * np.pi))
        grown = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if m.sum() < 30 or (grown & occupied).any():
            continue
        occupied |= grown
        rgb = np.clip(np.array(COLORS[color]) + rng.integers(-25, 26, size=3), 0, 255)
        img[m] = rgb.astype(np.uint8)
        instances.append(Instance(m, shape, color))
    return Scene(img, instances)


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE with str counts."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE -> (H, W) bool."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _annotation(inst: Instance, ann_id: int, image_id: int) -> dict:
    rle = encode_rle(inst.mask)
    x, y, w, h = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()
    return {
        "id": ann_id,
        "image_id": image_id,
        "segmentation": rle,
        "bbox": [x, y, w, h],
        "area": int(inst.mask.sum()),
        "iscrowd": 0,
        "shape": inst.shape,
        "color": inst.color,
        "caption": inst.caption,
        "category_id": SHAPES.index(inst.shape) + 1,
    }


def write_sa1b(out: Path, num_images: int, seed: int, size: int = 128, max_objects: int = 4) -> Path:
    """Write `num_images` scenes in SA-1B style plus coco_instances.json and captions.json; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)],
    }
    captions = {}
    ann_id = 1
    for i in range(num_images):
        scene = make_scene(seed * 1_000_003 + i, size, max_objects=max_objects)
        name = f"sa_{i:06d}"
        Image.fromarray(scene.image).save(out / f"{name}.png")
        info = {"image_id": i + 1, "file_name": f"{name}.png", "width": size, "height": size}
        anns = []
        for inst in scene.instances:
            anns.append(_annotation(inst, ann_id, i + 1))
            ann_id += 1
        (out / f"{name}.json").write_text(json.dumps({"image": info, "annotations": anns}))
        coco["images"].append({"id": i + 1, "file_name": f"{name}.png", "width": size, "height": size})
        coco["annotations"].extend(anns)
        captions[f"{name}.png"] = scene.caption()
    (out / "coco_instances.json").write_text(json.dumps(coco))
    (out / "captions.json").write_text(json.dumps(captions))
    return out


def write_imagefolder(out: Path, per_class: int, seed: int, size: int = 128) -> Path:
    """Single-shape images in class folders ``out/<shape>/NNNN.png`` (zero-shot classification)."""
    for k, shape in enumerate(SHAPES):
        (out / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            scene = make_scene(seed * 1_000_003 + k * 100_000 + i, size, 1, 1, shapes=(shape,))
            Image.fromarray(scene.image).save(out / shape / f"{i:04d}.png")
    return out


def write_semseg(out: Path, num_images: int, seed: int, size: int = 128, max_objects: int = 4) -> Path:
    """Images + label PNGs with classes CLASSES ("red circle", ...); label 0 = background."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        scene = make_scene(seed * 1_000_003 + i, size, max_objects=max_objects)
        label = np.zeros((size, size), np.uint8)
        for inst in scene.instances:
            label[inst.mask] = CLASSES.index(f"{inst.color} {inst.shape}") + 1
        Image.fromarray(scene.image).save(out / "images" / f"{i:05d}.png")
        Image.fromarray(label).save(out / "labels" / f"{i:05d}.png")
    (out / "classes.json").write_text(json.dumps(list(CLASSES)))
    return out


def read_sa1b_record(json_path: Path) -> tuple[np.ndarray, list[dict]]:
    """Read one SA-1B-style record -> (image (H, W, 3) uint8 RGB, annotations with decoded "mask")."""
    rec = json.loads(Path(json_path).read_text())
    image = np.asarray(Image.open(Path(json_path).parent / rec["image"]["file_name"]).convert("RGB"))
    anns = [dict(a, mask=decode_rle(a["segmentation"])) for a in rec["annotations"]]
    return image, anns
