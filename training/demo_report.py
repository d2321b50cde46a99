"""Evaluations and the report (seed-style table) of the demo run (training/demo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.config import TeacherConfig
from training.data.datasets import list_images, to_chw_uint8
from training.eval import tasks
from training.eval.__main__ import samclip_runner
from training.eval.metrics import binary_iou
from training.eval.runner import SamClipRunner
from training.eval.templates import class_embeddings
from training.interpolate import interpolate
from training.teachers import load_clip_teacher

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def text_vs_background(runner: SamClipRunner, data: Path) -> dict:
    """The service's /segment?text= rule (service/tasks/textseg.py) on held-out scenes: template-ensembled
    text ("red circle") against template-ensembled "background" per patch; logits upscaled bilinearly; the text
    wins -> foreground. IoU with the GT mask of that class, for every class present in every image."""
    classes = json.loads((data / "classes.json").read_text())
    text = runner.text_classes([*classes, "background"])
    ious = []
    for img_path in list_images(data / "images"):
        image = np.asarray(Image.open(img_path).convert("RGB"))
        label = np.asarray(Image.open(data / "labels" / img_path.name))
        prep = runner.prepare(image)
        _, dense = runner.encode(prep)
        for c in set(np.unique(label).tolist()) - {0}:
            diff = torch.einsum("hwd,d->hw", dense, text[c - 1] - text[-1])
            up = torch.nn.functional.interpolate(diff[None, None], size=(runner.size,) * 2, mode="bilinear")
            mask = up[0, 0, : prep.new_hw[0], : prep.new_hw[1]].numpy() > 0
            ious.append(binary_iou(mask, label == c))
    ious = np.array(ious)
    return {"mean_iou": float(ious.mean()), "frac_iou_ge_0.7": float((ious >= 0.7).mean()), "n": len(ious)}


def teacher_clip_top1(cfg_path: Path, weights: Path, data: Path) -> float:
    t = load_clip_teacher(TeacherConfig("demo-clip", str(weights), str(cfg_path), 64))

    def enc(ims):
        return t.encode_image(torch.stack([to_chw_uint8(i) for i in ims]))

    return tasks.classify(enc, lambda n: class_embeddings(t.encode_text, n), data)["top1"]


def merged_figures(ckpt: Path, data: dict[str, Path]) -> dict:
    r = samclip_runner(str(ckpt))
    inst = tasks.instseg(r, data["held_sa"])
    return {
        "top1": tasks.classify(r.clip_images, r.text_classes, data["held_cls"])["top1"],
        "box_miou": inst["box_miou"],
        "ap": inst["ap"],
        "semseg_128": tasks.semseg(r, data["held_seg"], 128)["miou"],
    }


def evaluate_all(out: Path, data: dict[str, Path], teachers: dict[str, Path], ckpts: dict) -> dict:
    res: dict = {
        "teacher_clip_top1": teacher_clip_top1(teachers["clip_config"], teachers["clip"], data["held_cls"])
    }
    sam_inst = tasks.instseg(samclip_runner(sam_checkpoint=str(teachers["sam"])), data["held_sa"])
    res["teacher_sam"] = {"box_miou": sam_inst["box_miou"], "ap": sam_inst["ap"], "ap50": sam_inst["ap50"]}
    res["merged"] = merged_figures(ckpts["3"], data)
    r = samclip_runner(str(ckpts["3"]))
    res["semseg"] = {
        "clip_head_96": tasks.semseg(r, data["held_seg"], 96)["miou"],
        "clip_head_128": tasks.semseg(r, data["held_seg"], 128)["miou"],
        "refine_128": tasks.refine_semseg(r, data["held_seg"], 8)["miou"],
    }
    res["text_vs_background"] = text_vs_background(r, data["held_seg"])
    curve = []
    for a in ALPHAS:
        path = interpolate(ckpts["1"], ckpts["3"], a, out / "wise_ft" / f"alpha_{a}.safetensors")
        curve.append({"alpha": a, **merged_figures(path, data)})
    res["wise_ft"] = curve
    return res


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _gate_lines(g: dict | None) -> list[str]:
    if not g:
        return []
    ious = ", ".join(f"{x:.2f}" for x in g["segment_ious"])
    return [
        "## Issue-7 gates through the service app (training/demo_gates.py, default backend)",
        "",
        f"- `/segment?text=red circle`, {len(g['segment_ious'])} scenes with one red circle among 3-4 shapes: "
        f"IoU {ious} (min {min(g['segment_ious']):.2f}; gate >= 0.7 on each: "
        f"{'met' if g['segment_pass'] else 'NOT met'});",
        f"- `/classify` circle/square/triangle on {g['classify_n']} single-shape images: top-1 "
        f"{_pct(g['classify_acc'])}% (gate >= 90%: {'met' if g['classify_pass'] else 'NOT met'}).",
        "",
    ]


def write_report(res: dict, path: Path) -> None:
    """Markdown report in the seed's table forms (Table 1, Table 4, Figure 6 as a table)."""
    m, ts, se = res["merged"], res["teacher_sam"], res["semseg"]
    t = res["timing"]
    lines = [
        "# Demo SAM-CLIP on the shapes dataset (held-out generated sets)",
        "",
        "Produced by `python -m training.demo --out DIR` (see training/README.md for the recipe and data).",
        "",
        "## Table 1 form: zero-shot classification and box-prompted instance segmentation",
        "",
        "| Model | 0-shot classification top-1 (%) | box-prompt mIoU (%) | instance seg. mask AP |",
        "|---|---|---|---|",
        f"| SAM teacher (tiny) | - | {_pct(ts['box_miou'])} | {_pct(ts['ap'])} |",
        f"| CLIP teacher (tiny OpenCLIP) | {_pct(res['teacher_clip_top1'])} | - | - |",
        f"| SAM-CLIP (merged) | {_pct(m['top1'])} | {_pct(m['box_miou'])} | {_pct(m['ap'])} |",
        "",
        f"Forgetting of SAM (box-prompt mIoU, teacher - merged): {_pct(ts['box_miou'] - m['box_miou'])} points.",
        "",
        "## Table 4 form: zero-shot semantic segmentation (mIoU %, 9 classes + background)",
        "",
        "| Method | Resolution | mIoU |",
        "|---|---|---|",
        f"| CLIP head only | 96px (448px-equivalent) | {_pct(se['clip_head_96'])} |",
        f"| CLIP head only | 128px | {_pct(se['clip_head_128'])} |",
        f"| CLIP+SAM heads (refine) | 128px (1024px-equivalent) | {_pct(se['refine_128'])} |",
        "",
        f'Service rule (`/segment?text=` text vs "background" per patch) on held-out scenes: mean IoU '
        f"{_pct(res['text_vs_background']['mean_iou'])}%, IoU >= 0.7 for "
        f"{_pct(res['text_vs_background']['frac_iou_ge_0.7'])}% of {res['text_vs_background']['n']} objects.",
        "",
        "## Figure 6 form: Wise-FT between stage-1 (SAM encoder untouched) and the final model",
        "",
        "| alpha | 0-shot top-1 (%) | box-prompt mIoU (%) | mask AP | CLIP-head semseg mIoU 128px (%) |",
        "|---|---|---|---|---|",
        *[
            f"| {c['alpha']} | {_pct(c['top1'])} | {_pct(c['box_miou'])} | {_pct(c['ap'])} | "
            f"{_pct(c['semseg_128']) if 'semseg_128' in c else '-'} |"
            for c in res["wise_ft"]
        ],
        "",
        *_gate_lines(res.get("gates")),
        "## Time",
        "",
        f"Total wall time {t['total_wall_s']} s ({t['procs']} single-threaded processes where parallel); per phase "
        "(wall s / CPU s of this process and its children):",
        "",
        *[f"- {k}: {v['wall_s']} / {v['cpu_s']}" for k, v in t["phases"].items()],
        "",
    ]
    path.write_text("\n".join(lines))
