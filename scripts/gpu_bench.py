"""Benchmarks for scripts/gpu_check.py: Backend-interface timings and end-to-end requests through the app.

Encoder images/s and decoder ms per prompt are measured through `service.runtime.base.Backend` (numpy in and
out, so host<->device copies are included, as the service pays them); end-to-end figures go through the
in-process FastAPI app (TestClient, no sockets). Each figure is the median of calls made after one warm-up.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from gpu_steps import Budget, Skip


def timed_calls(fn: Any, min_s: float = 1.5, max_iters: int = 20) -> list[float]:
    """One warm-up call, then calls until min_s elapsed (>= 2 calls, <= max_iters); seconds per call."""
    fn()
    times: list[float] = []
    while len(times) < 2 or (sum(times) < min_s and len(times) < max_iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_cpu_reference(bundle: Any, budget: Budget) -> dict[str, Any]:
    """fp32 ONNX Runtime on this machine's CPUs (the parity reference): encoder batch 1 and decoder with 16
    prompts, so each GPU figure can be given as a ratio measured in the same run."""
    from model_export.onnx_graphs import OnnxGraphs
    from samclip_bundle.graphs import GRAPHS
    from samclip_bundle.parity import generated_images, random_prompts

    budget.need(40)
    ref = OnnxGraphs({g: bundle.graph_path(g) for g in GRAPHS})
    image = generated_images(1, bundle.image_size, list(bundle.pixel_mean), list(bundle.pixel_std))
    enc = timed_calls(lambda: ref.encode(image), min_s=0.0, max_iters=2)
    emb = ref.encode(image).image_embeddings
    prompts = random_prompts(16, bundle.image_size, bundle.embed_grid)
    dec = timed_calls(lambda: ref.decode(emb, **prompts), min_s=0.5)
    return {
        "runtime": "onnxruntime CPUExecutionProvider fp32",
        "encoder_batch_1_ms": round(1000 * statistics.median(enc), 2),
        "decoder_ms_per_prompt_16": round(1000 * statistics.median(dec) / 16, 3),
    }


def bench_backend(backend: Any, bundle: Any, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    from samclip_bundle.parity import generated_images, random_prompts, random_text_ids

    size, grid = bundle.image_size, bundle.embed_grid
    mean, std = list(bundle.pixel_mean), list(bundle.pixel_std)
    out: dict[str, Any] = {"encoder": {}, "decoder": {}}
    for b in args.encoder_batches:
        budget.need(20)
        images = generated_images(b, size, mean, std)
        t = timed_calls(lambda x=images: backend.encode(x))
        out["encoder"][f"batch_{b}"] = {
            "images_per_s": round(b / statistics.median(t), 2),
            "ms_per_call": round(1000 * statistics.median(t), 2),
            "calls": len(t),
        }
    emb = backend.encode(generated_images(1, size, mean, std))
    for k in args.decoder_prompts:
        budget.need(10)
        prompts = random_prompts(k, size, grid)
        t = timed_calls(lambda p=prompts: backend.decode(emb.image_embeddings[:1], **p))
        out["decoder"][f"prompts_{k}"] = {
            "ms_per_prompt": round(1000 * statistics.median(t) / k, 3),
            "ms_per_call": round(1000 * statistics.median(t), 2),
            "calls": len(t),
        }
    t = timed_calls(lambda: backend.clip_head(emb.patch_tokens))
    out["clip_head_ms"] = round(1000 * statistics.median(t), 2)
    ids = random_text_ids(80, bundle.context_length)
    t = timed_calls(lambda: backend.encode_text(ids))
    out["text_80_ms"] = round(1000 * statistics.median(t), 2)
    return out


def _png(seed: int, width: int = 640, height: int = 480) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def end_to_end(
    name: str, extra: dict[str, Any], bundle_path: Path, args: argparse.Namespace, budget: Budget
) -> dict[str, Any]:
    """In-process app (no sockets): cold /embed, cached /segment/prompt, /segment/refine on new images."""
    budget.need(40)
    try:
        from fastapi.testclient import TestClient

        from service.main import create_app
        from service.settings import Settings
    except ImportError as exc:
        raise Skip(
            f"service stack not importable here ({exc}); carry the wheels (scripts/gpu_wheels.sh)"
        ) from exc
    settings = Settings(bundle=bundle_path, backend=name, **extra)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + min(180, budget.left())
        while (ready := client.get("/readyz").json())["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        if ready["status"] != "ready":
            raise RuntimeError(f"app not ready: {ready}")
        return _e2e_requests(client, args)


def _e2e_requests(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    def post(url: str, **kw: Any) -> tuple[float, Any]:
        start = time.perf_counter()
        resp = client.post(url, **kw)
        elapsed = time.perf_counter() - start
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code} {resp.text[:300]}")
        return elapsed, resp

    png = {"content": _png(0), "headers": {"Content-Type": "image/png"}}
    cold, resp = post("/embed", **png)
    image_id = resp.json()["image_id"]
    body = {
        "image_id": image_id,
        "prompts": [{"points": [{"x": 320, "y": 240, "label": 1}]}, {"box": [100, 80, 400, 300]}],
    }
    prompt_t, timing = [], ""
    for _ in range(args.e2e_requests):
        t, resp = post("/segment/prompt", json=body)
        prompt_t.append(t)
        timing = resp.headers.get("server-timing", "")
    refine_t = []
    for i in range(args.e2e_new_images):
        t, resp = post(
            "/segment/refine",
            params={"text": "dog"},
            content=_png(100 + i),
            headers={"Content-Type": "image/png"},
        )
        refine_t.append(t)
    return {
        "embed_cold_ms": round(1000 * cold, 2),
        "segment_prompt_cached_ms_median": round(1000 * statistics.median(prompt_t), 2),
        "segment_prompt_server_timing": timing,
        "segment_refine_new_image_ms_median": round(1000 * statistics.median(refine_t), 2),
        "requests": {"prompt": len(prompt_t), "refine": len(refine_t)},
        "image": "640x480 PNG",
    }
