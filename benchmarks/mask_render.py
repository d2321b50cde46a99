"""Post-processing + RLE of ONE mask shaped like a trained SAM's, per path, in this process (issue 16).

    python benchmarks/mask_render.py [--sizes 1500x2250,3000x4000] [--repeats 30]

A random-init decoder's masks are fine textures (~190k runs on 2250 x 1500), so the service benchmark's HTTP
figures exercise the per-pixel path; a trained SAM's masks are a few blobs. This figure feeds the service's own
post-processing and renderer (service.tasks.heads / service.render) the low-res logits of a few Gaussian blobs
over a negative floor ((256, 256) float32 over the padded 1024 input) at ORIGINAL size H x W, and times, from
the logits to the JSON-ready dict (`mask_to_json`, RLE):

- runs: the default path for such a mask (service/images/runs.py: RLE runs from the logits, no bitmap);
- bitmap: the per-pixel fast path (`postprocess_decision`, Fortran-ordered bitmap, pycocotools encode);
- plain: `postprocess_masks(...) > 0` (== Sam.postprocess_masks) then the same renderer.
Medians over blocks of calls per path (benchmarks/interactive_parity.py `_blocks`); nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMAGE_SIZE = 1024


def blob_logits(grid: int = 256, seed: int = 7, count: int = 4) -> np.ndarray:
    """(grid, grid) float32: Gaussian bumps (height 6, radius 8..grid/5) over -2, inside the top 2/3 (the input
    frame of a 3:2 landscape photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    out = np.full((grid, grid), -2.0, np.float32)
    centres = rng.uniform(0.1, 0.6, (count, 2)) * grid
    for (cy, cx), radius in zip(centres, rng.uniform(8, grid / 5, count), strict=True):
        out += 6.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    return out


def _paths(low: np.ndarray, original: tuple[int, int]) -> dict[str, Any]:
    """The three paths as calls; `runs` only where the run path applies (an image at least as tall as the
    input frame: mask_runs' docstring)."""
    from service import render
    from service.images.runs import mask_runs
    from service.images.transforms import postprocess_decision, postprocess_masks, preprocess_shape
    from service.tasks.results import MaskResult

    input_size = preprocess_shape(*original, IMAGE_SIZE)
    args = (input_size, original, IMAGE_SIZE)

    def runs() -> dict[str, Any]:
        return render.mask_to_json(MaskResult(runs=mask_runs(low, *args), score=1.0))

    def bitmap() -> dict[str, Any]:
        return render.mask_to_json(MaskResult(mask=postprocess_decision(low[None], *args), score=1.0))

    def plain() -> dict[str, Any]:
        return render.mask_to_json(MaskResult(mask=postprocess_masks(low[None], *args)[0] > 0, score=1.0))

    applies = mask_runs(low, *args) is not None
    return {"runs": runs, "bitmap": bitmap, "plain": plain} if applies else {"bitmap": bitmap, "plain": plain}


def figures(sizes: list[tuple[int, int]], repeats: int = 30) -> list[dict[str, Any]]:
    """Per ORIGINAL size (H, W): ms per path (medians), the ratios, the RLE's length, and whether the paths
    gave the same JSON (no `runs` figure where that path does not apply)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from interactive_parity import _blocks

    low = blob_logits()
    out = []
    for original in sizes:
        paths = _paths(low, original)
        results = {name: run() for name, run in paths.items()}
        times = {name: round(statistics.median(ts), 2) for name, ts in _blocks(paths, repeats).items()}
        first = results.get("runs", results["bitmap"])
        same = all(result == first for result in results.values())
        row = {
            "size": original,
            "ms": times,
            "same_json": same,
            "rle_chars": len(first["segmentation"]["counts"]),
        }
        if "runs" in times:
            row["runs_over_bitmap"] = round(times["runs"] / times["bitmap"], 3)
            row["runs_over_plain"] = round(times["runs"] / times["plain"], 3)
        out.append(row)
    return out


def _sizes(text: str) -> list[tuple[int, int]]:
    return [(int(h), int(w)) for h, w in (part.split("x") for part in text.split(","))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", type=_sizes, default=[(1500, 2250), (3000, 4000)], help="HxW,HxW original sizes"
    )
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    for row in figures(args.sizes, args.repeats):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
