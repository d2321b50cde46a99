"""Run one merging stage: ``python -m training.train --config demo --stage 1 --out DIR [...]``.

Single CPU process or ``torchrun --nproc_per_node N -m training.train ...`` (DDP; gloo on CPU, nccl on GPU).
Writes ``DIR/samclip.safetensors`` (model_export.checkpoint.save_samclip; the input of
``python -m model_export export --samclip-checkpoint``), ``DIR/state.pt`` (model + optimizer + step, resumable
with ``--resume``; read with ``torch.load(weights_only=True)``) and ``DIR/log.jsonl`` (losses per step).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model_export.build import build_model
from model_export.checkpoint import load_sam_checkpoint, load_samclip, save_samclip
from training.config import TrainConfig, load_train_config
from training.data.datasets import ImageFolderImages, SA1BDataset
from training.data.sampler import make_loader
from training.stages import MergeObjective, set_trainable
from training.teachers import SamTeacher, copy_text_tower, load_clip_teacher


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world, device); initialises the process group under torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def build_student(cfg: TrainConfig, init: str | None, clip_model) -> torch.nn.Module:
    """Stage input: a SAM-CLIP checkpoint (`init`), else SAM teacher weights + the CLIP teacher's text tower."""
    if init:
        model, _ = load_samclip(init, cfg.model)
        return model
    model = build_model(cfg.model, seed=cfg.seed)
    if not cfg.teacher.sam_checkpoint:
        raise SystemExit("no --init and no teacher.sam_checkpoint: nothing to initialise the encoder from")
    load_sam_checkpoint(model, cfg.teacher.sam_checkpoint)
    copy_text_tower(clip_model, model)
    return model


def sam_teacher_for(cfg: TrainConfig, student: torch.nn.Module) -> SamTeacher:
    """Frozen original SAM: from teacher.sam_checkpoint, else a copy of the (not yet fine-tuned) student."""
    if cfg.teacher.sam_checkpoint:
        original = build_model(cfg.model, seed=0)
        load_sam_checkpoint(original, cfg.teacher.sam_checkpoint)
        return SamTeacher(original)
    return SamTeacher(student)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _loaders(cfg: TrainConfig, stage, rank: int, world: int, image_size: int):
    clip = sam = None
    if stage.clip_weight > 0 and stage.clip_batch > 0:
        ds = ImageFolderImages(cfg.clip_images, seed=cfg.seed + rank)
        clip = make_loader(ds, stage.clip_batch, stage.clip_resolutions, cfg.seed, rank, world)
    if stage.sam_batch > 0:
        size = stage.sam_resolution or image_size
        ds = SA1BDataset(cfg.sam_data, size, stage.masks_per_image, cfg.seed + rank, stage.dense_weight > 0)
        sam = make_loader(ds, stage.sam_batch, (ds.size,), cfg.seed + 1, rank, world)
    return clip, sam


def _to(batch, device):
    if batch is None:
        return None
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return batch.to(device)


def _save_state(path: Path, student, optim, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": student.state_dict(), "optim": optim.state_dict(), "step": torch.tensor(step)}, tmp)
    os.replace(tmp, path)


def _ranks_agree(model: torch.nn.Module) -> bool:
    """DDP sanity check: every rank holds the same weights (float64 checksum of all parameters)."""
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _resume(path: Path, student, optim) -> int:
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    student.load_state_dict(state["model"])
    optim.load_state_dict(state["optim"])
    return int(state["step"])


def run_stage(
    cfg: TrainConfig, stage_name: str, out: Path, init: str | None = None, resume: bool = False
) -> Path:
    """Train one stage and return the path of the written SAM-CLIP checkpoint."""
    rank, world, device = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    stage = cfg.stage(stage_name)
    out.mkdir(parents=True, exist_ok=True)
    clip_teacher = load_clip_teacher(cfg.teacher)
    student = build_student(cfg, init, clip_teacher.model).train()
    sam_teacher = sam_teacher_for(cfg, student) if stage.train == "all" and stage.sam_weight > 0 else None
    groups = set_trainable(student, stage)
    objective = MergeObjective(student, clip_teacher, sam_teacher, stage).to(device)
    model = DistributedDataParallel(objective, find_unused_parameters=True) if world > 1 else objective
    base_lrs = [g["lr"] for g in groups]  # the optimizer's group dicts ARE `groups`: keep the bases apart
    optim = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
    start = _resume(out / "state.pt", student, optim) if resume else 0
    clip_it, sam_it = _loaders(cfg, stage, rank, world, student.config.image_size)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
    log = open(out / "log.jsonl", "a") if rank == 0 else None  # noqa: SIM115
    bar = tqdm(
        range(start, stage.steps),
        initial=start,
        total=stage.steps,
        disable=rank != 0,
        desc=f"stage {stage_name}",
    )
    t0 = time.time()
    for step in bar:
        for g, base in zip(optim.param_groups, base_lrs, strict=True):
            g["lr"] = base * lr_factor(step, stage.steps, stage.warmup_steps)
        clip_batch = _to(next(clip_it), device) if clip_it else None
        sam_batch = _to(next(sam_it), device) if sam_it else None
        with amp:
            loss, logs = model(clip_batch, sam_batch, cfg.seed * 100_003 + step * world + rank)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if rank == 0 and (step % cfg.log_every == 0 or step == stage.steps - 1):
            rec = {
                "stage": stage_name,
                "step": step,
                "loss": loss.item(),
                **logs,
                "time_s": round(time.time() - t0, 2),
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
        if rank == 0 and cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
            _save_state(out / "state.pt", student, optim, step + 1)
    ckpt = out / "samclip.safetensors"
    in_sync = _ranks_agree(student) if world > 1 else True
    if rank == 0:
        log.write(
            json.dumps({"stage": stage_name, "done": True, "world": world, "params_in_sync": in_sync}) + "\n"
        )
        _save_state(out / "state.pt", student, optim, stage.steps)
        extra = {
            "stage": stage_name,
            "steps": stage.steps,
            "stage_config": dataclasses.asdict(stage),
            "init": init,
        }
        save_samclip(student.eval(), ckpt, extra_metadata=extra)
        log.close()
    if world > 1:
        dist.barrier()
    return ckpt


def _overrides(cfg: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    kw = {k: getattr(args, k) for k in ("clip_images", "sam_data") if getattr(args, k)}
    if args.bf16:
        kw["bf16"] = True
    teacher = {
        k: getattr(args, k)
        for k in ("sam_checkpoint", "clip_pretrained", "clip_model_config")
        if getattr(args, k)
    }
    if teacher:
        kw["teacher"] = dataclasses.replace(cfg.teacher, **teacher)
    if args.steps:
        stage = dataclasses.replace(cfg.stage(args.stage), steps=args.steps)
        kw["stages"] = {**cfg.stages, str(args.stage): stage}
    return cfg.replace(**kw)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training/configs/<name>.json name or a JSON path")
    p.add_argument("--stage", required=True, choices=["1", "2", "3"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--init", help="SAM-CLIP safetensors to start from (output of the previous stage)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    p.add_argument("--steps", type=int, default=0, help="override the stage's step count")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    for name in ("clip-images", "sam-data", "sam-checkpoint", "clip-pretrained", "clip-model-config"):
        p.add_argument(f"--{name}", default="")
    args = p.parse_args(argv)
    cfg = _overrides(load_train_config(args.config), args)
    ckpt = run_stage(cfg, args.stage, args.out, args.init, args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"checkpoint": str(ckpt)}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
