"""CPU encoder benchmark: segment_anything fp32 eager (reference) vs every CPU backend/precision, in ONE run.

    python benchmarks/cpu_encoder.py --bundle /tmp/bundles/vit_b [--work /tmp/cpu_bench] [--runs 3]

On a random-init bundle (exported with `python -m model_export export --model vit_b --random-init --seed 0`) it
1. builds the same weights in PyTorch (model_export.build_model(seed)) and times segment_anything's
   ImageEncoderViT fp32 eager (the reference) and under torch bf16 autocast;
2. makes a working copy of the bundle (--work) and writes the reduced-precision
   variants there with `model_export.quantize.optimize` (openvino-int8 linear-only and with int8 attention,
   ort-int8), each recording its parity figures in the copy's manifest;
3. times the encoder (1 image at S x S, best of --runs after one warm-up) for each backend: onnxruntime fp32,
   onnxruntime-int8, openvino f32 / bf16 / int8-qdq / int8-qdq-attn, plus the CLIP head and one SAM decoder call,
   and measures the parity gates vs the plain onnxruntime backend (model_export/parity.py);
4. times a full /segment/refine request on a new image through the service Predictor (decode, preprocess, batched
   encoder, CLIP head, text, decoder, postprocess) per backend.
Prints one table (seconds/image, ratio to the reference, achieved TFLOP/s from the analytic FLOP count of the
config, parity figures). Ratios and figures come from this one run on this machine.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_export.parity import (  # noqa: E402
    CachedRunner,
    cosine_rows,
    generated_images,
    parity_report,
    random_prompts,
    random_text_ids,
)

CONFIGS = [  # (label, backend, settings overrides)
    ("onnxruntime fp32", "onnxruntime", {}),
    ("onnxruntime int8 (dynamic)", "onnxruntime-int8", {"variant": "int8-dynamic"}),
    ("openvino f32", "openvino", {"variant": "none", "openvino_precision": "f32"}),
    ("openvino bf16", "openvino", {"variant": "none", "openvino_precision": "bf16"}),
    ("openvino int8-qdq + bf16", "openvino", {"variant": "int8-qdq"}),
    ("openvino int8-qdq-attn + bf16", "openvino", {"variant": "int8-qdq-attn"}),
]


def encoder_flops(cfg: dict[str, Any], image_size: int) -> float:
    """Multiply-adds x 2 of the SAM ViT image encoder at image_size (patch embed, blocks, neck).

    Windowed blocks pad the token grid to a multiple of the window (qkv, proj and attention run on the padded
    windows; the MLP on the unpadded grid); attention counts QK^T and AV
    (2 * 2 * n^2 * width per window or globally) plus the decomposed relative-position terms."""
    g = image_size // cfg["patch_size"]
    w, hidden = cfg["embed_dim"], int(cfg["embed_dim"] * cfg["mlp_ratio"])
    n = g * g
    flops = 2.0 * n * w * 3 * cfg["patch_size"] ** 2
    for i in range(cfg["depth"]):
        if i in cfg["global_attn_indexes"]:
            seqs, side = 1, g
        else:
            side = cfg["window_size"]
            seqs = math.ceil(g / side) ** 2
        tokens = side * side
        flops += 2.0 * seqs * tokens * 4 * w * w + 2.0 * n * 2 * w * hidden  # qkv + proj (padded), mlp
        flops += seqs * (2.0 * 2 * tokens * tokens * w + 2.0 * 2 * tokens * side * w)  # attn + rel-pos
    c = cfg["out_chans"]
    flops += 2.0 * n * (w * c + 9 * c * c)
    return flops


def best_time(fn: Any, runs: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def working_copy(bundle: Path, work: Path) -> Path:
    """work/bundle: a copy of the bundle (optimize adds variant files and rewrites its manifest there, so the
    source bundle, possibly served by others, stays as it was)."""
    out = work / "bundle"
    if not (out / "manifest.json").is_file():
        shutil.copytree(bundle, out, dirs_exist_ok=True)
    return out


def make_variants(bundle: Path, calib: int, parity_samples: int) -> dict[str, Any]:
    from model_export.quantize import optimize

    manifest = json.loads((bundle / "manifest.json").read_text())
    have = {e["name"] for v in (manifest.get("variants") or {}).values() for e in v}
    out = {}
    for name, target, attention in (
        ("int8-qdq", "openvino-int8", False),
        ("int8-dynamic", "ort-int8", False),
        ("int8-qdq-attn", "openvino-int8", True),
    ):
        if name in have:
            continue
        start = time.perf_counter()
        summary = optimize(
            bundle, target, calib_samples=calib, parity_samples=parity_samples, attention=attention
        )
        summary["seconds"] = round(time.perf_counter() - start, 1)
        out[name] = summary
        print(
            f"# optimize {name}: {json.dumps({k: summary[k] for k in ('kept', 'dropped', 'seconds')})}",
            flush=True,
        )
    return out


def sam_encoder(bundle: Path) -> Any:
    """segment_anything's ImageEncoderViT (fp32, eval) with the bundle's random-init weights (build_model(seed))."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT

    from model_export.build import build_model

    manifest = json.loads((bundle / "manifest.json").read_text())
    model = build_model(manifest["model"]["name"], seed=manifest["weights"].get("seed"))
    c = manifest["model"]["config"]["encoder"]
    encoder = ImageEncoderViT(
        img_size=manifest["preprocess"]["image_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"],
        depth=c["depth"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], out_chans=c["out_chans"],
        qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=c["use_rel_pos"],
        window_size=c["window_size"], global_attn_indexes=tuple(c["global_attn_indexes"]),
    ).eval()  # fmt: skip
    state = {
        k.removeprefix("image_encoder."): v
        for k, v in model.state_dict().items()
        if k.startswith("image_encoder.")
    }
    encoder.load_state_dict(state, strict=True)
    return encoder


def torch_reference(bundle: Path, image: np.ndarray, runs: int) -> dict[str, Any]:
    """segment_anything ImageEncoderViT with the bundle's random-init weights: fp32 eager and bf16 autocast."""
    import torch

    encoder = sam_encoder(bundle)
    x = torch.from_numpy(image)
    with torch.inference_mode():
        fp32 = best_time(lambda: encoder(x), runs)
        emb = encoder(x).numpy()

        def bf16_run() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return encoder(x)

        bf16 = best_time(bf16_run, runs)
        emb_bf16 = bf16_run().float().numpy()
    return {
        "fp32_s": fp32,
        "bf16_s": bf16,
        "embedding": emb,
        "bf16_cosine": float(cosine_rows(emb, emb_bf16)[0]),
    }


def interleaved_encoders(bundle: Path, image: np.ndarray, rounds: int, flops: float, only: list[str]) -> None:
    """Encoder-only timing with every path timed round-robin (robust to other load on a shared machine):
    segment_anything fp32 / torch bf16, ORT fp32 / int8 sessions, OpenVINO f32 / bf16 / int8 variants compiled
    exactly as OpenVinoBackend does (static 1x3xSxS, LATENCY hint, all usable CPUs). Prints min s/image."""
    import onnxruntime as ort
    import openvino as ov
    import torch

    from service.runtime.cpus import available_cpus

    manifest = json.loads((bundle / "manifest.json").read_text())
    variants = {e["name"]: e["file"] for e in manifest.get("variants", {}).get("encoder", [])}
    encoder, xt = sam_encoder(bundle), torch.from_numpy(image)

    def bf16() -> Any:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return encoder(xt)

    runners: dict[str, Any] = {
        "segment_anything fp32 eager (ref)": lambda: encoder(xt),
        "torch bf16 autocast": bf16,
    }
    if only:  # the reference always runs; the others only when named (memory: each holds its own buffers)
        runners = {k: v for k, v in runners.items() if "(ref)" in k or any(w in k for w in only)}
    for label, file in (
        ("onnxruntime fp32", "encoder.onnx"),
        ("onnxruntime int8", variants.get("int8-dynamic")),
    ):
        if file and (not only or any(w in label for w in only)):
            sess = ort.InferenceSession(str(bundle / file), providers=["CPUExecutionProvider"])
            runners[label] = lambda s=sess: s.run(None, {"image": image})
    core = ov.Core()
    for label, file, precision in (
        ("openvino f32", "encoder.onnx", "f32"),
        ("openvino bf16", "encoder.onnx", "bf16"),
        ("openvino int8-qdq + bf16", variants.get("int8-qdq"), "bf16"),
        ("openvino int8-qdq-attn + bf16", variants.get("int8-qdq-attn"), "bf16"),
    ):
        if file and (not only or any(w in label for w in only)):
            model = core.read_model(str(bundle / file))
            model.reshape({model.inputs[0].get_any_name(): list(image.shape)})
            config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_NUM_THREADS": available_cpus()}  # fmt: skip
            request = core.compile_model(model, "CPU", config).create_infer_request()
            runners[label] = lambda r=request: r.infer({0: image})
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for fn in runners.values():
            fn()  # warm-up
        for _ in range(rounds):
            for label, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
    ref = min(times["segment_anything fp32 eager (ref)"])
    print(
        f"\n{'encoder only, interleaved x' + str(rounds):34} {'min s':>7} {'median':>7} {'x ref':>6} {'TFLOP/s':>7}"
    )
    for label, ts in times.items():
        best = min(ts)
        print(
            f"{label:34} {best:7.2f} {statistics.median(ts):7.2f} {ref / best:6.2f} {flops / best / 1e12:7.3f}"
        )


def _png(seed: int, width: int = 1280, height: int = 960) -> bytes:
    from PIL import Image

    img = generated_images(1, max(width, height), [0, 0, 0], [1, 1, 1], seed=seed)[0]
    rgb = np.clip(img.transpose(1, 2, 0)[:height, :width], 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


async def refine_times(bundle_obj: Any, backend: Any, runs: int) -> float:
    """Best wall time of a /segment/refine on a NEW image (encoder included) through the service Predictor."""
    from service.metrics import Metrics
    from service.pipeline.decode import decode_image
    from service.pipeline.predictor import Predictor
    from service.settings import Settings
    from service.timing import Timings

    settings = Settings()
    predictor = Predictor(bundle_obj, backend, settings, Metrics())
    await predictor.start()
    times = []
    for i in range(runs + 1):  # the first one also fills the text cache
        data = _png(100 + i)
        start = time.perf_counter()
        image = decode_image(data, settings)
        entry = await predictor.get_entry(
            image=image, image_id=None, timings=Timings(), deadline=time.monotonic() + 600
        )
        await predictor.refine(entry, "a dog", settings.refine_points, settings.refine_seed, Timings())
        times.append(time.perf_counter() - start)
    await predictor.stop()
    return min(times[1:]) if len(times) > 1 else times[0]


def main() -> int:
    import asyncio

    from service.bundle import Bundle
    from service.runtime.base import create_backend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("/tmp/bundles/vit_b"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpu_bench"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--calib-samples", type=int, default=2)
    ap.add_argument("--parity-samples", type=int, default=2)
    ap.add_argument("--skip-refine", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated labels substrings to run (default all)")
    ap.add_argument(
        "--interleaved", type=int, default=0, help="ONLY the encoder-only round-robin timing, N rounds"
    )
    args = ap.parse_args()

    t_start = time.perf_counter()
    bundle_path = working_copy(args.bundle, args.work)
    optimize_log = make_variants(bundle_path, args.calib_samples, args.parity_samples)
    bundle = Bundle.load(bundle_path)
    cfg = bundle.manifest["model"]["config"]["encoder"]
    flops = encoder_flops(cfg, bundle.image_size)
    images = generated_images(
        args.parity_samples, bundle.image_size, list(bundle.pixel_mean), list(bundle.pixel_std), seed=7
    )
    prompts = random_prompts(12, bundle.image_size, bundle.embed_grid, seed=7)
    text_ids = random_text_ids(9, seed=7)
    x = images[:1]
    if args.interleaved:
        interleaved_encoders(bundle_path, x, args.interleaved, flops, [s for s in args.only.split(",") if s])
        return 0
    print(
        f"# bundle {args.bundle} ({bundle.model_name}, S={bundle.image_size}); encoder {flops / 1e12:.3f} TFLOP/image; "
        f"{os.cpu_count()} CPUs visible, affinity {len(os.sched_getaffinity(0))}",
        flush=True,
    )

    ref = torch_reference(bundle_path, x, args.runs)
    print(
        f"# segment_anything fp32 eager {ref['fp32_s']:.2f} s; torch bf16 autocast {ref['bf16_s']:.2f} s",
        flush=True,
    )
    settings = SimpleNamespace(intra_op_threads=0, inter_op_threads=1, providers=["CPUExecutionProvider"])
    plain = create_backend("onnxruntime", bundle, settings)
    reference = CachedRunner(plain)
    rows = [
        ("segment_anything fp32 eager (ref)", ref["fp32_s"], None, None, None, {}, None),
        (
            "torch bf16 autocast",
            ref["bf16_s"],
            None,
            None,
            None,
            {"encoder_embedding_cosine": ref["bf16_cosine"]},
            None,
        ),
    ]
    wanted = [s for s in args.only.split(",") if s]
    for label, name, overrides in CONFIGS:
        if wanted and not any(w in label for w in wanted):
            continue
        try:
            backend = (
                plain
                if name == "onnxruntime" and not overrides
                else create_backend(name, bundle, SimpleNamespace(**vars(settings), **overrides))
            )
        except Exception as exc:  # a variant that did not pass parity is not in the manifest
            print(f"# {label}: skipped ({exc})", flush=True)
            continue
        enc = best_time(lambda b=backend: b.encode(x), args.runs)
        tokens = backend.encode(x).patch_tokens
        head = best_time(lambda b=backend, t=tokens: b.clip_head(t), 1)
        emb = reference.encode(x).image_embeddings
        dec = best_time(lambda b=backend, e=emb: b.decode(e, **prompts), 1)
        parity = parity_report(reference, backend, images, prompts, text_ids)
        if name == "onnxruntime" and not overrides:
            parity["encoder_embedding_cosine_vs_segment_anything"] = float(
                cosine_rows(ref["embedding"], emb)[0]
            )
        refine = None if args.skip_refine else asyncio.run(refine_times(bundle, backend, 1))
        rows.append((label, enc, head, dec, refine, parity, backend.info.details.get("graphs")))
        print(
            f"# {label}: encoder {enc:.2f} s, clip head {head:.2f} s, decoder(12 prompts) {dec:.3f} s, "
            f"refine {refine if refine is None else round(refine, 2)} s, parity {json.dumps(parity)}",
            flush=True,
        )
        if backend is not plain:
            del backend
            gc.collect()

    print_table(rows, ref["fp32_s"], flops)
    print(
        f"\n# optimize: {json.dumps({k: {'kept': v['kept'], 'seconds': v['seconds']} for k, v in optimize_log.items()})}"
    )
    print(f"# total benchmark wall time {time.perf_counter() - t_start:.0f} s")
    return 0


def print_table(rows: list[tuple], ref_s: float, flops: float) -> None:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = (
        f"{'backend / precision':34} {'enc s/img':>9} {'x ref':>6} {'TFLOP/s':>7} {'head s':>6} {'dec s':>6} "
        f"{'refine s':>8} {'enc cos':>8} {'mask IoU':>8} {'img cos':>8} {'txt cos':>8} {'seg IoU':>7} gates"
    )
    print("\n" + head)
    print("-" * len(head))
    for label, enc, hd, dec, refine, p, _ in rows:
        gates = "-" if "passed" not in p else ("PASS" if p["passed"] else "FAIL")
        print(
            f"{label:34} {enc:9.2f} {ref_s / enc:6.2f} {flops / enc / 1e12:7.3f} {f(hd, '6.2f')} {f(dec, '6.3f')} "
            f"{f(refine, '8.2f')} {f(p.get('encoder_embedding_cosine'), '8.5f')} {f(p.get('decoder_mask_iou'), '8.4f')} "
            f"{f(p.get('clip_image_cosine'), '8.5f')} {f(p.get('clip_text_cosine'), '8.5f')} "
            f"{f(p.get('text_segment_iou'), '7.4f')} {gates}"
        )
    print(
        "gates: mask IoU >= 0.97, img/txt cos >= 0.99, seg IoU >= 0.95 (vs onnxruntime fp32 on the same inputs); "
        "refine = /segment/refine on a new 1280x960 image through the Predictor (encoder included)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
