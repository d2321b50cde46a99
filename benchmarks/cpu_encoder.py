"""CPU encoder benchmark: the DEFAULT serve path vs segment_anything fp32 eager (reference), in ONE run.

    python benchmarks/cpu_encoder.py --bundle /tmp/bundles/vit_b [--work /tmp/cpu_bench] [--runs 3] [--server 3]

On a random-init bundle (exported with `python -m model_export export --model vit_b --random-init --seed 0`,
which also writes its default CPU variant) it
1. builds the same weights in PyTorch (model_export.build_model(seed)) and times segment_anything's
   ImageEncoderViT fp32 eager (the reference) and under torch bf16 autocast;
2. times the DEFAULT path: `create_backend("auto", ...)` on the bundle as exported (what `python -m service`
   with no settings runs: backend, variant and why are printed);
3. makes a working copy of the bundle (--work) with every other reduced-precision variant
   (`model_export.quantize.optimize`: openvino-int8 linear-only and with int8 attention, ort-int8), each
   recording its parity figures in the copy's manifest, and times each backend/variant for comparison;
4. with --server N (ONLY this step): starts `python -m service --bundle B` with NO SAMCLIP_* settings, and times
   N POST /embed of new 1024x1024 PNGs (decode, preprocess, encoder, response: a new image's full encode through
   the server), each right after one reference pass, reporting the ratio.
Prints one table (seconds/image, ratio to the reference, achieved TFLOP/s from the analytic FLOP count of the
config, parity figures vs plain onnxruntime fp32). Ratios and figures come from this one run on this machine.
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

from samclip_bundle.manifest import Manifest  # noqa: E402
from samclip_bundle.parity import (  # noqa: E402
    CachedRunner,
    cosine_rows,
    generated_images,
    parity_report,
    random_prompts,
    random_text_ids,
)

CONFIGS = [  # (label, backend, settings overrides)
    ("onnxruntime fp32", "onnxruntime", {"variant": "none"}),
    ("onnxruntime int8 (dynamic)", "onnxruntime", {"variant": "int8-dynamic"}),
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
    if not Manifest.exists(out):
        shutil.copytree(bundle, out, dirs_exist_ok=True)
    return out


def make_variants(bundle: Path, calib: int, parity_samples: int) -> dict[str, Any]:
    from model_export.quantize import optimize

    manifest = Manifest.read(bundle)
    have = {e.name for v in manifest.variants.values() for e in v}
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

    manifest = Manifest.read(bundle)
    model = build_model(manifest.model.name, seed=manifest.weights.seed)
    c = manifest.model.config["encoder"]
    encoder = ImageEncoderViT(
        img_size=manifest.preprocess.image_size, patch_size=c["patch_size"], embed_dim=c["embed_dim"],
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

    variants = {e.name: e.file for e in Manifest.read(bundle).variants.get("encoder", [])}
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


def _png(seed: int, side: int = 1024) -> bytes:
    """A new photo-like side x side RGB PNG (distinct bytes per seed: every one misses the embedding cache)."""
    from PIL import Image

    img = generated_images(1, side, [0, 0, 0], [1, 1, 1], seed=seed)[0]
    rgb = np.clip(img.transpose(1, 2, 0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _server_rounds(http: Any, encoder: Any, x: Any, rounds: int) -> tuple[list, list, list]:
    """`rounds` x (one segment_anything fp32 eager pass, one POST /embed of a new 1024 px PNG); returns the
    reference seconds, the /embed seconds and each /embed's Server-Timing stages (ms)."""
    import torch

    from benchmarks.service_latency import parse_server_timing

    ref, served, stages = [], [], []
    for i in range(rounds):
        with torch.inference_mode():
            start = time.perf_counter()
            encoder(x)
            ref.append(time.perf_counter() - start)
        body = _png(1000 + i)
        start = time.perf_counter()
        response = http.post("/embed", content=body, headers={"Content-Type": "image/png"})
        served.append(time.perf_counter() - start)
        response.raise_for_status()
        stages.append(parse_server_timing(response.headers.get("Server-Timing", ""))[0])
    return ref, served, stages


def server_vs_reference(
    bundle: Path, image: np.ndarray, rounds: int, backend: str | None = None
) -> dict[str, Any]:
    """`python -m service --bundle B` with no SAMCLIP_* settings; `rounds` POST /embed of new 1024px PNGs, each
    right after one segment_anything fp32 eager pass on the same machine. Returns min/median seconds, ratios,
    each round's (reference s, server s, ratio): a pair shares the machine's load of the moment, and the
    median of each Server-Timing stage (decode, preprocess, queue, encoder, total; ms)."""
    import httpx
    import torch

    from benchmarks.service_latency import free_port, running_server

    encoder, x = sam_encoder(bundle), torch.from_numpy(image)
    clean = {k: v for k, v in os.environ.items() if k.startswith("SAMCLIP_")}
    for key in clean:
        del os.environ[key]
    try:
        with (
            running_server(bundle, backend, free_port(), 900) as url,
            httpx.Client(base_url=url, timeout=900) as http,
        ):
            info = http.get("/info").json()
            http.post("/embed", content=_png(999), headers={"Content-Type": "image/png"})  # warm-up
            ref, served, stages = _server_rounds(http, encoder, x, rounds)
    finally:
        os.environ.update(clean)
    return {
        "backend": info.get("backend"),
        "reference_min_s": min(ref),
        "reference_median_s": statistics.median(ref),
        "server_embed_min_s": min(served),
        "server_embed_median_s": statistics.median(served),
        "ratio_min": min(ref) / min(served),
        "ratio_median": statistics.median(ref) / statistics.median(served),
        "rounds": [[round(r, 3), round(s, 3), round(r / s, 2)] for r, s in zip(ref, served, strict=True)],
        "ratio_per_round_median": statistics.median(r / s for r, s in zip(ref, served, strict=True)),
        "server_stages_median_ms": {
            k: round(statistics.median(st.get(k, 0.0) for st in stages), 1) for k in stages[0]
        },
    }


def time_backend(label: str, backend: Any, reference: Any, inputs: tuple, runs: int) -> tuple:
    """One table row: encoder / CLIP head / decoder seconds and the parity figures against `reference`."""
    images, prompts, text_ids = inputs
    x = images[:1]
    enc = best_time(lambda: backend.encode(x), runs)
    tokens = backend.encode(x).patch_tokens
    head = best_time(lambda: backend.clip_head(tokens), 1)
    emb = reference.encode(x).image_embeddings
    dec = best_time(lambda: backend.decode(emb, **prompts), 1)
    parity = parity_report(reference, backend, images, prompts, text_ids)
    print(
        f"# {label}: encoder {enc:.2f} s, clip head {head:.2f} s, decoder(12 prompts) {dec:.3f} s, "
        f"parity {json.dumps(parity)}",
        flush=True,
    )
    return (label, enc, head, dec, parity)


def main() -> int:
    from service.bundle import Bundle
    from service.runtime.registry import create_backend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("/tmp/bundles/vit_b"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpu_bench"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--calib-samples", type=int, default=2)
    ap.add_argument("--parity-samples", type=int, default=2)
    ap.add_argument(
        "--server", type=int, default=0, help="ONLY N new images through the server vs the reference"
    )
    ap.add_argument("--server-backend", default=None, help="SAMCLIP_BACKEND for --server (default: none set)")
    ap.add_argument("--only", default="", help="comma-separated labels substrings to run (default all)")
    ap.add_argument(
        "--interleaved", type=int, default=0, help="ONLY the encoder-only round-robin timing, N rounds"
    )
    args = ap.parse_args()

    t_start = time.perf_counter()
    default_bundle = Bundle.load(args.bundle)
    flops = encoder_flops(default_bundle.manifest.model.config["encoder"], default_bundle.image_size)
    images = generated_images(
        args.parity_samples, default_bundle.image_size, list(default_bundle.pixel_mean),
        list(default_bundle.pixel_std), seed=7,
    )  # fmt: skip
    inputs = (images, random_prompts(12, default_bundle.image_size, default_bundle.embed_grid, seed=7))
    inputs += (random_text_ids(9, seed=7),)
    x = images[:1]
    if args.server:
        served = server_vs_reference(args.bundle, x, args.server, args.server_backend)
        print(f"# server, no settings: {json.dumps(served, default=str)}", flush=True)
        return 0
    bundle_path = working_copy(args.bundle, args.work)
    optimize_log = make_variants(bundle_path, args.calib_samples, args.parity_samples)
    if args.interleaved:
        interleaved_encoders(bundle_path, x, args.interleaved, flops, [s for s in args.only.split(",") if s])
        return 0
    print(
        f"# bundle {args.bundle} ({default_bundle.model_name}, S={default_bundle.image_size}); encoder "
        f"{flops / 1e12:.3f} TFLOP/image; {os.cpu_count()} CPUs visible, affinity {len(os.sched_getaffinity(0))}",
        flush=True,
    )
    ref = torch_reference(args.bundle, x, args.runs)
    print(f"# segment_anything fp32 eager {ref['fp32_s']:.2f} s; torch bf16 autocast {ref['bf16_s']:.2f} s")
    settings = SimpleNamespace(intra_op_threads=0, inter_op_threads=1, providers=["CPUExecutionProvider"])
    plain = create_backend("onnxruntime", default_bundle, SimpleNamespace(**vars(settings), variant="none"))
    reference = CachedRunner(plain)
    rows = [
        ("segment_anything fp32 eager (ref)", ref["fp32_s"], None, None, {}),
        ("torch bf16 autocast", ref["bf16_s"], None, None, {"encoder_embedding_cosine": ref["bf16_cosine"]}),
    ]
    default = create_backend("auto", default_bundle, SimpleNamespace(**vars(settings), variant="auto"))
    selection = default.info.details["selection"]
    print(f"# DEFAULT path (backend=auto): {json.dumps(selection)}", flush=True)
    label = f"DEFAULT: {selection['backend']} {selection['variant'] or 'fp32 graphs'}"
    rows.append(time_backend(label, default, reference, inputs, args.runs))
    default.close()
    work = Bundle.load(bundle_path)
    wanted = [s for s in args.only.split(",") if s]
    for label, name, overrides in CONFIGS:
        if wanted and not any(w in label for w in wanted):
            continue
        try:
            backend = create_backend(name, work, SimpleNamespace(**vars(settings), **overrides))
        except Exception as exc:  # a variant that did not pass parity is not in the manifest
            print(f"# {label}: skipped ({exc})", flush=True)
            continue
        rows.append(time_backend(label, backend, reference, inputs, args.runs))
        backend.close()
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
        f"{'backend / precision':40} {'enc s/img':>9} {'x ref':>6} {'TFLOP/s':>7} {'head s':>6} {'dec s':>6} "
        f"{'enc cos':>8} {'mask IoU':>8} {'img cos':>8} {'txt cos':>8} {'seg IoU':>7} gates"
    )
    print("\n" + head)
    print("-" * len(head))
    for label, enc, hd, dec, p in rows:
        gates = "-" if "passed" not in p else ("PASS" if p["passed"] else "FAIL")
        print(
            f"{label:40} {enc:9.2f} {ref_s / enc:6.2f} {flops / enc / 1e12:7.3f} {f(hd, '6.2f')} {f(dec, '6.3f')} "
            f"{f(p.get('encoder_embedding_cosine'), '8.5f')} {f(p.get('decoder_mask_iou'), '8.4f')} "
            f"{f(p.get('clip_image_cosine'), '8.5f')} {f(p.get('clip_text_cosine'), '8.5f')} "
            f"{f(p.get('text_segment_iou'), '7.4f')} {gates}"
        )
    print(
        "gates: mask IoU >= 0.97, img/txt cos >= 0.99, seg IoU >= 0.95 (vs onnxruntime fp32 on the same inputs)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
