"""COCOeval AP of the labelling CLI (`samclip label ... --instances`) on a held-out generated set (issue 14).

    python benchmarks/label_coco_eval.py [--scenes 20] [--text "red circle" ...] [--url URL] [--json out.json]

1. Scenes: `training.data.shapes.make_scene(seed, min_objects=2, max_objects=5)` for seeds from 700_000 up,
   kept when they hold at least one object of the first text. These seeds are held out: training draws
   scenes from seeds >= 1_000_003 (`write_sa1b(seed * 1_000_003 + i)`), the demo gates from 50_000 / 90_000.
2. Writes `images/scene_<seed>.png` (128 x 128 RGB) and `ground_truth.json` (COCO instances: one category per
   text, one annotation per object whose "<colour> <shape>" equals the text, RLE masks).
3. Starts `python -m service` on the demo bundle (unless `--url`) and runs the real CLI:
   `python -m samclip_client label images --text ... --instances --url URL --out labels.json`.
4. Loads `labels.json` with pycocotools' COCO(), maps its images onto the ground truth by file name and runs
   COCOeval(iouType="segm"): AP (IoU .50:.95), AP50, AP75, overall and per text.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/label_coco_eval.py` from anywhere
    sys.path.insert(0, str(ROOT))

from loadtests.run import free_port, start_server, stop_server, wait_ready  # noqa: E402
from training.data.shapes import Scene, encode_rle, make_scene  # noqa: E402

DEMO_BUNDLE = ROOT / "training" / "demo_bundle"
FIRST_SEED = 700_000


def held_out_scenes(n: int, text: str, first_seed: int = FIRST_SEED) -> list[tuple[int, Scene]]:
    """The first `n` scenes (seed, scene) from `first_seed` up holding at least one `text` object."""
    out, seed = [], first_seed
    while len(out) < n:
        scene = make_scene(seed, min_objects=2, max_objects=5)
        if any(f"{i.color} {i.shape}" == text for i in scene.instances):
            out.append((seed, scene))
        seed += 1
    return out


def write_dataset(folder: Path, scenes: list[tuple[int, Scene]], texts: list[str]) -> Path:
    """PNG images under folder/images and their COCO ground truth folder/ground_truth.json (returned)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (seed, scene) in enumerate(scenes, start=1):
        name = f"scene_{seed}.png"
        Image.fromarray(scene.image).save(folder / "images" / name)
        height, width = scene.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for inst in scene.instances:
            text = f"{inst.color} {inst.shape}"
            if text in texts:
                ys, xs = np.nonzero(inst.mask)
                bbox = [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": texts.index(text) + 1, "segmentation": encode_rle(inst.mask),
                                    "bbox": bbox, "area": int(inst.mask.sum()), "iscrowd": 0})  # fmt: skip
    categories = [{"id": i + 1, "name": t} for i, t in enumerate(texts)]
    path = folder / "ground_truth.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def run_cli(images: Path, texts: list[str], url: str, out: Path, concurrency: int = 4) -> None:
    """The labelling CLI as a user runs it (a subprocess; raises if it exits non-zero)."""
    cmd = [sys.executable, "-m", "samclip_client", "label", str(images), "--instances", "--url", url,
           "--out", str(out), "--no-progress", "--concurrency", str(concurrency)]  # fmt: skip
    for text in texts:
        cmd += ["--text", text]
    subprocess.run(cmd, cwd=ROOT, check=True)


def detections(gt: COCO, labelled: COCO) -> list[dict[str, Any]]:
    """The labelled annotations as COCO results on the ground truth's image and category ids."""
    image_ids = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    category_ids = {cat["name"]: cat["id"] for cat in gt.dataset["categories"]}
    names = {img["id"]: os.path.basename(img["file_name"]) for img in labelled.dataset["images"]}
    categories = {cat["id"]: cat["name"] for cat in labelled.dataset["categories"]}
    return [
        {"image_id": image_ids[names[a["image_id"]]], "category_id": category_ids[categories[a["category_id"]]],
         "segmentation": a["segmentation"], "score": a["score"]}
        for a in labelled.dataset["annotations"]
    ]  # fmt: skip


def evaluate(gt_path: Path, labelled_path: Path) -> dict[str, Any]:
    """COCOeval (segm) of the CLI's output against the ground truth: AP, AP50, AP75 and AP per text."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt, labelled = COCO(str(gt_path)), COCO(str(labelled_path))
        dets = detections(gt, labelled)
        result = {"images": len(gt.getImgIds()), "ground_truth": len(gt.getAnnIds()), "detections": len(dets)}
        if not dets:
            return result | {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "per_text": {}}
        ev = COCOeval(gt, gt.loadRes(dets), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (iou thresholds, recall points, categories, areas, max dets)
    per_text = {}
    for k, cat_id in enumerate(ev.params.catIds):
        values = precision[:, :, k, 0, -1]
        per_text[gt.cats[cat_id]["name"]] = round(float(values[values > -1].mean()), 4)
    stats = [round(float(v), 4) for v in ev.stats[:3]]
    return result | {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "per_text": per_text}


def measure(texts: list[str], scenes: int, url: str | None, work: Path) -> dict[str, Any]:
    """Generate, label (starting a demo server when `url` is None) and evaluate; the figures."""
    gt_path = write_dataset(work, held_out_scenes(scenes, texts[0]), texts)
    out = work / "labels.json"
    proc = None
    if url is None:
        port = free_port()
        proc = start_server(DEMO_BUNDLE, port, {}, work / "server.log")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, 120)
    try:
        run_cli(work / "images", texts, url, out)
    finally:
        if proc is not None:
            stop_server(proc, 30)
    return {"texts": texts, "first_seed": FIRST_SEED, **evaluate(gt_path, out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=20, help="held-out scenes (default %(default)s)")
    p.add_argument("--text", action="append", help='texts to label (default: "red circle")')
    p.add_argument("--url", help="an already running server (default: start one on the demo bundle)")
    p.add_argument("--work-dir", type=Path, help="keep images, ground truth and labels here")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    texts = args.text or ["red circle"]
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(texts, args.scenes, args.url, args.work_dir or Path(tmp))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
