"""``python -m training.demo --out DIR``: the whole demo from scratch, on CPU.

1. generate the shapes dataset (train + held-out sets);
2. train the small teachers (tiny SAM; tiny OpenCLIP with the CLIP BPE tokenizer);
3. merge them into a tiny SAM-CLIP with the seed's recipe (training/configs/demo.json: stages 1, 2, 3;
   the SAM teacher's weights initialise the encoder and SAM head, the CLIP teacher's text tower is copied);
4. export the bundle (``python -m model_export export --model demo --samclip-checkpoint ...``);
5. evaluate on the held-out sets (incl. the Wise-FT curve), measure the issue-7 gates through the service app
   on the exported bundle (training/demo_gates.py) and write DIR/REPORT.md + DIR/report.json.
``--scale`` multiplies every step count (e.g. 0.02 for a smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from training.config import load_train_config
from training.data.shapes import write_imagefolder, write_sa1b, write_semseg
from training.demo_clip import ClipTeacherRecipe, train_clip_teacher
from training.demo_gates import measure_gates
from training.demo_report import evaluate_all, write_report
from training.demo_teachers import train_sam_teacher

TEACHER_STEPS = {"sam": 1200, "clip": ClipTeacherRecipe.steps}
DATA = {"train": 4000, "singles": 1500, "held_sa": 80, "held_cls": 40, "held_seg": 80}


class Clock:
    """Wall and CPU seconds per phase."""

    def __init__(self) -> None:
        self.t0, self.phases = time.time(), {}

    def cpu(self) -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime

    def run(self, name: str, fn, *a, **kw):
        t, c = time.time(), self.cpu()
        out = fn(*a, **kw)
        self.phases[name] = {"wall_s": round(time.time() - t, 1), "cpu_s": round(self.cpu() - c, 1)}
        print(f"[demo] {name}: {self.phases[name]}", flush=True)
        return out


def make_data(root: Path, scale: float) -> dict[str, Path]:
    """Training scenes (1-4 objects) and single-object scenes, both SA-1B style under train/ (the CLIP
    distillation folder: every image under it), and the held-out evaluation sets."""
    n, m = (max(40, int(DATA[k] * min(1.0, scale * 4))) for k in ("train", "singles"))
    return {
        "train": write_sa1b(root / "train" / "scenes", n, seed=1),
        "singles": write_sa1b(root / "train" / "singles", m, seed=5, max_objects=1),
        "clip": root / "train",
        "held_sa": write_sa1b(root / "heldout_sa", DATA["held_sa"], seed=2),
        "held_cls": write_imagefolder(root / "heldout_cls", DATA["held_cls"], seed=3),
        "held_seg": write_semseg(root / "heldout_seg", DATA["held_seg"], seed=4),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def merge(
    out: Path, data: dict[str, Path], teachers: dict[str, Path], scale: float, procs: int
) -> dict[str, Path]:
    """Stages 1-3 of the recipe, each `python -m training.train` under torchrun with `procs` CPU processes
    (DDP, gloo); returns each stage's checkpoint."""
    cfg = load_train_config("demo")
    teacher = dataclasses.replace(
        cfg.teacher,
        sam_checkpoint=str(teachers["sam"]),
        clip_model_config=str(teachers["clip_config"]),
        clip_pretrained=str(teachers["clip"]),
    )
    stages = {k: dataclasses.replace(v, steps=max(2, int(v.steps * scale))) for k, v in cfg.stages.items()}
    cfg = cfg.replace(
        teacher=teacher, clip_images=str(data["clip"]), sam_data=str(data["train"]), stages=stages, threads=1
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    ckpts, init = {}, []
    for name in ("1", "2", "3"):
        run = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={procs}",
            f"--master_port={_free_port()}",
        ]
        args = ["-m", "training.train", "--config", str(out / "config.json"), "--stage", name]
        subprocess.run([*run, *args, "--out", str(out / f"stage{name}"), *init], check=True)
        ckpts[name] = out / f"stage{name}" / "samclip.safetensors"
        init = ["--init", str(ckpts[name])]
    return ckpts


def _sam_job(data: Path, out: Path, steps: int) -> Path:
    torch.set_num_threads(1)
    return train_sam_teacher(data, out, "demo", steps, 8, 1.5e-3, 0)


def _clip_job(data: Path, singles: Path, out: Path, steps: int) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    return train_clip_teacher(data, singles, out, "demo", ClipTeacherRecipe(steps=steps))


def train_teachers(data: dict[str, Path], out: Path, steps: dict[str, int]) -> dict[str, Path]:
    """Both teachers at once, one single-threaded process each (2 cores)."""
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        sam = pool.submit(_sam_job, data["train"], out, steps["sam"])
        clip = pool.submit(_clip_job, data["train"], data["singles"], out, steps["clip"])
        cfg, weights = clip.result()
        return {"sam": sam.result(), "clip_config": cfg, "clip": weights}


def export(ckpt: Path, bundle: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "model_export",
        "export",
        "--model",
        "demo",
        "--samclip-checkpoint",
        str(ckpt),
    ]
    subprocess.run([*cmd, "--out", str(bundle), "--no-progress"], check=True)


def _paths(out: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    """Data, teacher and checkpoint paths of a finished run in `out` (for --eval-only)."""
    d = out / "data"
    data = {
        "train": d / "train" / "scenes",
        "singles": d / "train" / "singles",
        "clip": d / "train",
        "held_sa": d / "heldout_sa",
        "held_cls": d / "heldout_cls",
        "held_seg": d / "heldout_seg",
    }
    t = out / "teachers"
    teachers = {
        "sam": t / "sam_demo.safetensors",
        "clip_config": t / "demo-clip.json",
        "clip": t / "demo_clip.safetensors",
    }
    ckpts = {k: out / "merge" / f"stage{k}" / "samclip.safetensors" for k in ("1", "2", "3")}
    return data, teachers, ckpts


def _finish(out: Path, results: dict, timing: dict) -> None:
    results["timing"] = timing
    (out / "report.json").write_text(json.dumps(results, indent=2))
    write_report(results, out / "REPORT.md")
    print(f"[demo] done in {timing['total_wall_s']} s; report: {out / 'REPORT.md'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--scale", type=float, default=1.0, help="multiply all step counts (smoke runs: 0.02)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--procs", type=int, default=2, help="DDP processes for the merge stages (one per core)")
    p.add_argument("--clip-steps", type=int, default=0, help="override the CLIP teacher's step count")
    p.add_argument("--reuse-teachers", action="store_true", help="keep teachers already trained in --out")
    p.add_argument(
        "--eval-only", action="store_true", help="re-run the evaluation of a finished run in --out"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out, clock, scale = args.out, Clock(), args.scale
    out.mkdir(parents=True, exist_ok=True)
    if args.eval_only:
        data, teachers, ckpts = _paths(out)
        results = clock.run("eval", evaluate_all, out, data, teachers, ckpts)
        results["gates"] = clock.run("gates", measure_gates, out / "bundle")
        old = (
            json.loads((out / "report.json").read_text())["timing"] if (out / "report.json").is_file() else {}
        )
        results["steps"] = json.loads((out / "report.json").read_text()).get("steps") if old else None
        return _finish(
            out, results, old or {"total_wall_s": None, "phases": clock.phases, "procs": args.procs}
        )
    data = clock.run("data", make_data, out / "data", scale)
    steps = {k: max(2, int(v * scale)) for k, v in TEACHER_STEPS.items()}
    if args.clip_steps:
        steps["clip"] = args.clip_steps
    reuse = _paths(out)[1]
    if args.reuse_teachers and all(p.is_file() for p in reuse.values()):
        teachers = reuse  # teachers of an earlier run in the same --out (their time is not counted here)
    else:
        teachers = clock.run("teachers", train_teachers, data, out / "teachers", steps)
    ckpts = clock.run("merge", merge, out / "merge", data, teachers, scale, args.procs)
    clock.run("export", export, ckpts["3"], out / "bundle")
    results = clock.run("eval", evaluate_all, out, data, teachers, ckpts)
    results["gates"] = clock.run("gates", measure_gates, out / "bundle")
    results["steps"] = {"teachers": steps, "scale": scale}
    timing = {"total_wall_s": round(time.time() - clock.t0, 1), "phases": clock.phases, "procs": args.procs}
    _finish(out, results, timing)


if __name__ == "__main__":
    main()
