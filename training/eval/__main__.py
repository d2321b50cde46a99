"""``python -m training.eval {classify,semseg,refine,instseg} ...`` -> JSON on stdout.

Model: ``--checkpoint`` (SAM-CLIP safetensors) or, for teachers, ``--sam-checkpoint P --model M`` (SAM,
instseg) and ``--clip-model NAME [--clip-pretrained P] [--clip-model-config JSON] [--clip-image-size R]``
(OpenCLIP, classify).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.config import TeacherConfig
from training.eval import tasks
from training.eval.runner import SamClipRunner
from training.eval.templates import class_embeddings


def samclip_runner(checkpoint: str = "", sam_checkpoint: str = "", model: str = "demo") -> SamClipRunner:
    from model_export.build import build_model
    from model_export.checkpoint import load_sam_checkpoint, load_samclip

    if checkpoint:
        return SamClipRunner(load_samclip(checkpoint)[0])
    net = build_model(model, seed=0)
    load_sam_checkpoint(net, sam_checkpoint)
    return SamClipRunner(net)


def classify_fns(args: argparse.Namespace):
    """(encode_images, text_emb_fn) for a SAM-CLIP checkpoint or an OpenCLIP teacher."""
    if args.checkpoint:
        r = samclip_runner(args.checkpoint)
        return (lambda ims: r.clip_images(ims, args.resolution or None)), r.text_classes
    from training.data.datasets import to_chw_uint8
    from training.teachers import load_clip_teacher

    cfg = TeacherConfig(args.clip_model, args.clip_pretrained, args.clip_model_config, args.clip_image_size)
    t = load_clip_teacher(cfg)

    def enc(ims):
        return t.encode_image(torch.stack([to_chw_uint8(i) for i in ims]))

    return enc, lambda names: class_embeddings(t.encode_text, names)


def run(args: argparse.Namespace) -> dict:
    data = Path(args.data)
    if args.task == "classify":
        return tasks.classify(*classify_fns(args), data)
    runner = samclip_runner(args.checkpoint, args.sam_checkpoint, args.model)
    if args.task == "semseg":
        return tasks.semseg(runner, data, args.resolution or runner.size)
    if args.task == "refine":
        clip_only = tasks.semseg(runner, data, args.resolution or runner.size)
        refined = tasks.refine_semseg(runner, data, args.points, args.seed)
        return {"clip_head_only": clip_only["miou"], "refine": refined["miou"], "points": args.points}
    return tasks.instseg(runner, data)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["classify", "semseg", "refine", "instseg"])
    p.add_argument(
        "--data", required=True, help="ImageFolder (classify), images+labels (semseg/refine), COCO (instseg)"
    )
    p.add_argument("--checkpoint", default="", help="SAM-CLIP safetensors")
    p.add_argument("--sam-checkpoint", default="", help="SAM weights (teacher SAM evaluation)")
    p.add_argument("--model", default="demo", help="architecture for --sam-checkpoint")
    p.add_argument("--clip-model", default="ViT-L-14")
    p.add_argument("--clip-pretrained", default="")
    p.add_argument("--clip-model-config", default="")
    p.add_argument("--clip-image-size", type=int, default=224)
    p.add_argument("--resolution", type=int, default=0, help="input side (0 = model input size)")
    p.add_argument("--points", type=int, default=8, help="refine: importance-sampled points")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.checkpoint or args.sam_checkpoint or (args.task == "classify" and args.clip_model)):
        p.error("give --checkpoint (or --sam-checkpoint for instseg)")
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
