"""The CPU work one more box prompt costs, and the floor that work sets on this machine (issue 16).

    python benchmarks/interactive_floor.py [--bundle /tmp/bundles/vit_b] [--size 1500x2250]

A cached K-box `/segment/prompt` spends, per extra box, one more prompt in the decoder and one more mask's
finishing (post-processing to ORIGINAL size + RLE + bbox/area: service.tasks.heads, service.render). Both are
timed here in this process with the service's own code, on the default backend made twice:

- with ONE inference thread and OpenCV on one thread: the work itself, in core-ms (no thread ever waits for
  another, so it is the least CPU time the step has taken here);
- with the default thread counts: the wall time the service sees.

Decoder per extra prompt = (t(4 boxes) - t(1 box)) / 3 (one call each, as the service batches a request's boxes).
Finishing is timed for the mask the random-init decoder gives (a fine texture: ~190k runs at 2250 x 1500) and
for a trained-like mask (benchmarks/mask_render.py `blob_logits`: a few blobs). With every core busy all the
time and no HTTP, one extra box cannot take less than (decoder core-ms + finishing core-ms) / usable CPUs: the
`floor_ms` figures. Medians over blocks of calls (interactive_parity `_blocks`); nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

BOXES = (1, 4)


def _runs(bundle: Any, backend: Any, size: tuple[int, int]) -> dict[str, Any]:
    """The timed calls: decoder with 1 and 4 boxes, finishing of a random-init and of a trained-like mask."""
    from interactive_parity import _entry, _images
    from interactive_requests import boxes
    from mask_render import blob_logits

    from service import render
    from service.tasks.heads import Heads
    from service.tasks.prompt import Prompt, build_decoder_batches
    from service.timing import Timings

    heads = Heads(bundle, backend, lambda entry: None)
    entry = _entry(bundle, backend.encode(_images(bundle, 1, seed=61)), 0, size, "float16")

    def decode(count: int) -> Any:
        height, width = size
        prompts = [Prompt(box=tuple(b["box"])) for b in boxes(count, 62, width, height)]
        masks = [None] * count
        (batch,) = build_decoder_batches(
            prompts, entry.original_size, heads.image_size, masks, heads.mask_grid
        )
        return lambda: heads.decode(entry, batch.point_coords, batch.point_labels, batch.mask_input,
                                    batch.has_mask_input, Timings())  # fmt: skip

    def finish(low_res: np.ndarray) -> Any:
        scores = np.ones(len(low_res), np.float32)
        return lambda: render.masks_to_json(heads.masks(entry, low_res, scores, Timings()), "rle")

    texture = decode(1)().low_res_masks[:1, 0]  # (1, 4h, 4w): SAM's single-mask output for a box
    blob = blob_logits(grid=heads.mask_grid)[None]
    runs = {f"decoder_{k}_box_ms": decode(k) for k in BOXES}
    return {**runs, "finish_random_init_ms": finish(texture), "finish_trained_like_ms": finish(blob)}


def _timed(bundle_dir: Path, size: tuple[int, int], threads: int, repeats: int) -> dict[str, float]:
    """Medians (ms) of `_runs` on a backend with `threads` inference threads and OpenCV on `threads`."""
    from interactive_parity import _backend, _blocks

    saved = cv2.getNumThreads()
    bundle, backend = _backend(bundle_dir, intra_op_threads=threads)
    cv2.setNumThreads(threads)
    try:
        times = _blocks(_runs(bundle, backend, size), repeats)
    finally:
        cv2.setNumThreads(saved)
        backend.close()
    out = {name: round(statistics.median(ts), 2) for name, ts in times.items()}
    first, last = BOXES
    out["decoder_extra_box_ms"] = round((out[f"decoder_{last}_box_ms"] - out[f"decoder_{first}_box_ms"])
                                        / (last - first), 2)  # fmt: skip
    return out


def floor(bundle_dir: Path, size: tuple[int, int], repeats: int = 12) -> dict[str, Any]:
    """{"cpus", "one_thread": medians, "default": medians, "floor_ms": {mask kind: ms}} (module docstring)."""
    from service.runtime.cpus import available_cpus

    cpus = available_cpus()
    work = _timed(bundle_dir, size, 1, repeats)
    wall = _timed(bundle_dir, size, cpus, repeats)
    floors = {
        kind: round((work["decoder_extra_box_ms"] + work[f"finish_{kind}_ms"]) / cpus, 2)
        for kind in ("random_init", "trained_like")
    }
    return {"cpus": cpus, "size": list(size), "one_thread": work, "default": wall, "floor_ms": floors}


def _size(text: str) -> tuple[int, int]:
    height, width = text.split("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("/tmp/bundles/vit_b"))
    p.add_argument("--size", type=_size, default=(1500, 2250), help="HxW original size")
    p.add_argument("--repeats", type=int, default=12)
    args = p.parse_args(argv)
    res = floor(args.bundle, args.size, args.repeats)
    print(f"{res['cpus']} usable CPUs, {args.size[0]}x{args.size[1]} image")
    for name in res["one_thread"]:
        print(f"  {name:<28} 1 thread {res['one_thread'][name]:>7}   default {res['default'][name]:>7}")
    for kind, ms in res["floor_ms"].items():
        print(f"  floor per extra box, {kind} mask: {ms} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
