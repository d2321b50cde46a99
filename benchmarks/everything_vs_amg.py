"""Segment-everything (service/tasks/everything.py) against segment_anything's SamAutomaticMaskGenerator on
the same weights, the same image and the same parameters (single crop): masks matched and time per image.

    python benchmarks/everything_vs_amg.py --bundle training/demo_bundle [--size 512] [--points-per-side 32]
        [--pred-iou-thresh 0.88] [--stability-score-thresh 0.95] [--box-nms-thresh 0.7] [--json out.json]
    python benchmarks/everything_vs_amg.py --tiny    # random-init `tiny` exported here, torch Sam reference

Reference model:
- `--tiny`: segment_anything's own torch `Sam` built with the tiny hyper-parameters and the same random
  weights that were exported to the bundle the service runs (as tests/service/tasks/test_parity.py does).
- `--bundle DIR`: no torch checkpoint ships with a bundle, so the reference `Sam` wraps the bundle's own ONNX
  encoder and decoder graphs (ONNX Runtime, fp32 graphs, no variant) as its image_encoder / prompt_encoder /
  mask_decoder; SamPredictor's preprocessing, Sam.postprocess_masks (torch interpolate) and the whole
  SamAutomaticMaskGenerator (grid, batches, filters, stability, batched_nms) are segment_anything's.
Scene: a procedural shapes scene (training/data/shapes.py), the demo model's training domain.

Matching: reference mask r is matched when some service mask has IoU >= 0.95 with it (and vice versa for the
service's masks). Times: one run each, same process, same image; `service_s` excludes the encoder pass (the
service runs it once per image and caches it), `service_encode_s` is that pass; `reference_s` is
SamAutomaticMaskGenerator.generate (its set_image included, as it always runs it). Ratios only mean something
within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MATCH_IOU = 0.95


def bundle_sam(backend: Any, image_size: int, pixel_mean: Any, pixel_std: Any) -> Any:
    """A segment_anything `Sam` whose encoder / prompt encoder / decoder are `backend`'s ONNX graphs."""
    import torch
    from segment_anything.modeling import Sam

    class Encoder(torch.nn.Module):
        img_size = image_size

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(backend.encode(x.numpy().astype(np.float32)).image_embeddings)

    class Prompts(torch.nn.Module):
        """Passes the points through, with PromptEncoder's padding point when there is no box."""

        def forward(self, points: Any, boxes: Any, masks: Any) -> tuple[Any, None]:
            coords, labels = points
            assert boxes is None and masks is None, "the generator only sends points"
            coords = torch.cat([coords, torch.zeros(len(coords), 1, 2)], dim=1)
            labels = torch.cat([labels.float(), -torch.ones(len(labels), 1)], dim=1)
            return (coords, labels), None

        def get_dense_pe(self) -> None:
            return None

    class Decoder(torch.nn.Module):
        def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                    multimask_output):  # fmt: skip
            coords, labels = sparse_prompt_embeddings
            count, grid = len(coords), 4 * image_embeddings.shape[-1]
            masks, has_mask = np.zeros((count, 1, grid, grid), np.float32), np.zeros((count,), np.float32)
            out = backend.decode(image_embeddings.numpy(), coords.numpy().astype(np.float32),
                                 labels.numpy().astype(np.float32), masks, has_mask)  # fmt: skip
            pick = slice(1, None) if multimask_output else slice(0, 1)
            return torch.from_numpy(out.low_res_masks[:, pick]), torch.from_numpy(
                out.iou_predictions[:, pick]
            )

    return Sam(Encoder(), Prompts(), Decoder(), list(pixel_mean), list(pixel_std)).eval()


def best_iou(ours: list[np.ndarray], ref: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(for each reference mask: its best IoU with a service mask; for each service mask: its best IoU with a
    reference mask), two float arrays (0 when the other side is empty). Matched: >= MATCH_IOU."""
    if not ours or not ref:
        return np.zeros(len(ref)), np.zeros(len(ours))
    a = np.stack(ours).reshape(len(ours), -1).astype(np.float32)
    b = np.stack(ref).reshape(len(ref), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = inter / np.maximum(union, 1.0)
    return iou.max(axis=0), iou.max(axis=1)


def shapes_png(size: int, seed: int = 3) -> bytes:
    """A procedural shapes scene (size x size) as PNG bytes."""
    from PIL import Image

    from training.data.shapes import make_scene

    scene = make_scene(seed, size=size, min_objects=4, max_objects=6)
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="PNG")
    return buf.getvalue()


async def compare(engine: Any, sam: Any, data: bytes, params: Any) -> dict[str, Any]:
    """Run both on the image `data` with EverythingParams `params`; figures of one run."""
    from segment_anything import SamAutomaticMaskGenerator

    from service.images.decode import decode_image
    from service.images.source import ImageSource
    from service.tasks.everything import segment_everything
    from service.timing import Timings

    rgb = decode_image(data, engine.settings).rgb
    t0 = time.perf_counter()
    entry = await engine.images.get(await ImageSource.upload(data), Timings(), time.monotonic() + 600)
    t1 = time.perf_counter()
    ours = await engine.run(segment_everything, engine.heads, entry, params, None, None, Timings())
    t2 = time.perf_counter()
    generator = SamAutomaticMaskGenerator(
        sam, points_per_side=params.points_per_side, points_per_batch=params.points_per_batch,
        pred_iou_thresh=params.pred_iou_thresh, stability_score_thresh=params.stability_score_thresh,
        box_nms_thresh=params.box_nms_thresh, crop_n_layers=0,
    )  # fmt: skip
    t3 = time.perf_counter()
    ref = generator.generate(rgb)[: params.max_masks]
    t4 = time.perf_counter()
    ref_best, ours_best = best_iou([m.mask for m in ours], [r["segmentation"] for r in ref])
    ours_side = {"masks": len(ours), "scores": [m.score for m in ours],
                 "stability": [m.stability_score for m in ours], "best_iou": ours_best}  # fmt: skip
    ref_side = {"masks": len(ref), "scores": [r["predicted_iou"] for r in ref],
                "stability": [r["stability_score"] for r in ref], "best_iou": ref_best}  # fmt: skip
    out: dict[str, Any] = {
        "image": [int(rgb.shape[1]), int(rgb.shape[0])],
        "params": dataclasses.asdict(params),
    }
    for name, side in (("service", ours_side), ("reference", ref_side)):
        best = np.asarray(side["best_iou"])
        out[f"{name}_masks"] = side["masks"]
        out[f"{name}_matched"] = int((best >= MATCH_IOU).sum())
        out[f"{name}_unmatched"] = np.flatnonzero(best < MATCH_IOU).tolist()
        for key in ("scores", "stability", "best_iou"):
            out[f"{name}_{key}"] = [round(float(v), 4) for v in side[key]]
    seconds = {"service_s": t2 - t1, "service_encode_s": t1 - t0, "reference_s": t4 - t3}
    out.update({k: round(v, 4) for k, v in seconds.items()})
    out["reference_over_service"] = round(seconds["reference_s"] / max(seconds["service_s"], 1e-9), 2)
    return out


async def start_engine(bundle_path: Path, **overrides: Any) -> Any:
    """A started Engine on ONNX Runtime over `bundle_path`, fp32 graphs (no variant)."""
    from service.bundle import Bundle
    from service.engine import Engine
    from service.metrics import Metrics
    from service.runtime.registry import create_backend
    from service.settings import Settings

    settings = Settings(bundle=bundle_path, variant="none", **overrides)
    bundle, metrics = Bundle.load(bundle_path), Metrics()
    engine = Engine(bundle, create_backend("onnxruntime", bundle, settings, metrics), settings, metrics)
    await engine.start()
    return engine


def _reference(args: argparse.Namespace, engine: Any, model: Any) -> Any:
    if model is not None:
        sys.path.insert(0, str(ROOT / "tests" / "service" / "tasks"))
        from test_parity import reference_sam

        return reference_sam(model, engine.bundle.manifest.model.config)
    from service.runtime.registry import create_backend

    backend = create_backend("onnxruntime", engine.bundle, engine.settings)
    b = engine.bundle
    return bundle_sam(backend, b.image_size, b.pixel_mean, b.pixel_std)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from service.tasks.everything import EverythingParams

    model, bundle_path = None, args.bundle
    if args.tiny:
        from model_export.build import build_model
        from model_export.config import load_config
        from model_export.export_onnx import export_bundle

        model, bundle_path = build_model("tiny", seed=0), Path(tempfile.mkdtemp()) / "tiny"
        provenance = {"random_init": True, "seed": 0, "sources": []}
        export_bundle(model, load_config("tiny"), bundle_path, provenance, progress=False)
    params = EverythingParams(
        points_per_side=args.points_per_side, points_per_batch=64, pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh, box_nms_thresh=args.box_nms_thresh,
        max_masks=args.max_masks,
    )  # fmt: skip
    engine = await start_engine(bundle_path)
    try:
        sam = _reference(args, engine, model)
        result = await compare(engine, sam, shapes_png(args.size), params)
    finally:
        await engine.stop()
    result["model"] = (
        "tiny (random init, torch Sam reference)" if args.tiny else f"{bundle_path} (ONNX-backed Sam)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "training" / "demo_bundle")
    parser.add_argument("--tiny", action="store_true", help="random-init tiny model, torch Sam reference")
    parser.add_argument("--size", type=int, default=512, help="side of the square shapes scene")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--max-masks", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
