"""End-to-end service latency over HTTP, measured in ONE run against a real `python -m service` process.

    python benchmarks/service_latency.py --bundle /tmp/bundles/vit_b [--backend NAME]
        [--repeats 2] [--cached-repeats 10] [--boxes 1,2,4] [--width 2250 --height 1500]
        [--photo-width 4000 --photo-height 3000] [--no-offline] [--json out.json]

The script starts `python -m service --bundle B --port P` as a subprocess: the DEFAULT serve path (backend and
variant chosen by `auto`, reported from /info), or `--backend X` (env SAMCLIP_BACKEND set too), waits for
`/readyz` 200, then sends requests with httpx over one keep-alive connection. Every image is a 2250x1500
(--width x --height) JPEG generated in code from its own seed, so each has distinct bytes and therefore a
distinct cache key (sha256 of the bytes): a "new" image always misses the embedding cache.
A second server runs the path before issue 16 (same bundle and backend; benchmarks/interactive_requests.py
PREVIOUS_PATH) for the interactive figures, which alternate requests between the two (that module's
docstring); the in-process figures (parity against fp32, float16 storage, the official segment_anything ONNX
decoder, the CPU work per extra box and the floor it sets: benchmarks/interactive_floor.py) follow once the
servers stopped (benchmarks/interactive_parity.py). ONE run prints them all.

Per repeat r (interleaved, so drift in the shared machine's load hits every figure alike):
  cold     POST /segment/prompt, multipart image A_r + one point prompt: decode + preprocess + encoder + decoder
           + postprocess, all over HTTP (the response's Server-Timing must say cache miss);
  embed    POST /embed on a new image B_r: the encoder-only request;
  refine   POST /segment/refine?text=T on a new image C_r: ONE encoder pass feeds both the CLIP head (coarse mask,
           sampled points) and the SAM decoder, so refine/embed should be close to 1. The encoder-run counter
           (/metrics samclip_encoder_runs_total) is read around these requests to show one pass per image.
Before the first refine, the text cache is warmed with T on the already-encoded image A_0 (by image_id): the
first use of a text runs 80 prompt templates (for T and for each background prompt) through the text encoder.
That cost is reported separately: the Server-Timing `text` stage of that call, and the wall time of that call
minus an identical call right after it (text cached, CLIP head memoised).
Then --cached-repeats calls of POST /segment/prompt with JSON `{"image_id": A_0, "prompts": [...]}`, each with a
new point: the cached prompt-segment latency (decoder + postprocess only; Server-Timing must say cache hit).

Server overhead per request (HTTP + decode + postprocess), method:
  client wall time (perf_counter around the whole HTTP exchange, body read included)
  MINUS the model stages the server reports in `Server-Timing` (encoder, head, text, decoder; each measured
  around the backend call inside the server).
  What remains is everything that is not model inference: upload and transport, uvicorn/FastAPI routing and
  request parsing, JPEG decode, preprocess (resize, normalise, pad), batcher queue wait (max_batch_wait_ms),
  mask upscaling to the original size + RLE encoding (`postprocess`), and JSON rendering. It is reported for the
  cached prompt (wall - decoder) and for the cold prompt (wall - encoder - decoder), with the server stages that
  make it up (decode, preprocess, queue, postprocess) and `transport` = wall - Server-Timing `total` (the
  server's own request time, taken when the response starts).
All figures are medians over the repeats of this run; ratios are computed from them. Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from samclip_bundle.manifest import Manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below, from any directory
from interactive_parity import figures  # noqa: E402
from interactive_requests import PREVIOUS_PATH, measure, print_figures  # noqa: E402
from servers import free_port, running_server, running_servers  # noqa: E402, F401 (running_server: cpu_encoder)

MODEL_STAGES = ("encoder", "head", "text", "decoder")
_STAGE_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*(?:;\s*dur=([0-9.]+))?(?:\s*;\s*desc="?([^",]*)"?)?')
_ENCODER_RUNS_RE = re.compile(r"^samclip_encoder_runs_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


# --- inputs ------------------------------------------------------------------------------------------------
def make_jpeg(seed: int, width: int, height: int, quality: int = 90) -> bytes:
    """A photo-like (smooth colour fields + fine noise) RGB JPEG of width x height; distinct bytes per seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 18, 3), dtype=np.uint8)  # (h, w, 3) uint8 colour fields
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
    noise = rng.integers(-12, 13, size=(height, width, 3), dtype=np.int16)
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)  # (H, W, 3) uint8 RGB
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def point_prompt(i: int, width: int, height: int) -> list[dict[str, Any]]:
    """One foreground point, a different one for each i, in original-image pixels (x right, y down)."""
    x = (width * 0.5 + 37.0 * i) % (width - 1)
    y = (height * 0.5 + 23.0 * i) % (height - 1)
    return [{"points": [{"x": round(x, 1), "y": round(y, 1), "label": 1}]}]


# --- measurement -------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One HTTP exchange: client wall time (ms), Server-Timing stages (ms), cache hit/miss, JSON body."""

    wall_ms: float
    stages: dict[str, float] = field(default_factory=dict)
    cache: str | None = None
    body: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> float:
        return self.stages.get(name, 0.0)

    @property
    def model_ms(self) -> float:
        return sum(self.stage(s) for s in MODEL_STAGES)

    @property
    def overhead_ms(self) -> float:
        return self.wall_ms - self.model_ms


def parse_server_timing(header: str) -> tuple[dict[str, float], str | None]:
    """`decode;dur=1.2, encoder;dur=300.0, cache;desc="miss", total;dur=350` -> ({stage: ms}, "miss")."""
    stages: dict[str, float] = {}
    cache = None
    for part in header.split(","):
        match = _STAGE_RE.match(part)
        if not match or not match.group(1):
            continue
        name, dur, desc = match.groups()
        if name == "cache":
            cache = desc
        elif dur is not None:
            stages[name] = stages.get(name, 0.0) + float(dur)
    return stages, cache


class Client:
    """httpx over one keep-alive connection; every call returns a Sample or raises with the server's error."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url, self.timeout_s = base_url, timeout_s
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def post(self, path: str, expect_cache: str | None = None, **kwargs: Any) -> Sample:
        start = time.perf_counter()
        response = self.http.post(path, **kwargs)
        body = response.content
        wall_ms = (time.perf_counter() - start) * 1000.0
        if response.status_code != 200:
            raise RuntimeError(f"POST {path} -> {response.status_code}: {body[:500]!r}")
        stages, cache = parse_server_timing(response.headers.get("server-timing", ""))
        if expect_cache is not None and cache != expect_cache:
            raise RuntimeError(f"POST {path}: expected cache {expect_cache}, Server-Timing says {cache}")
        return Sample(wall_ms, stages, cache, json.loads(body))

    def encoder_runs(self) -> float:
        match = _ENCODER_RUNS_RE.search(self.http.get("/metrics").text)
        return float(match.group(1)) if match else float("nan")

    def close(self) -> None:
        self.http.close()


# --- the benchmark -----------------------------------------------------------------------------------------
def run_requests(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """All timed requests of one run (see the module docstring). Returns raw Samples per kind."""
    w, h, text = args.width, args.height, args.text
    jpeg = lambda seed: make_jpeg(seed, w, h)  # noqa: E731
    multipart = lambda data: {"image": ("image.jpg", data, "image/jpeg")}  # noqa: E731
    out: dict[str, Any] = {"cold": [], "embed": [], "refine": [], "refine_encoder_runs": []}
    for r in range(args.repeats):
        seed = args.seed + 3 * r
        prompts = json.dumps(point_prompt(r, w, h))
        cold = client.post("/segment/prompt", "miss", files=multipart(jpeg(seed)), data={"prompts": prompts})
        out["cold"].append(cold)
        if r == 0:
            out["cold_image_id"] = cold.body["image_id"]
            by_id = {"params": {"text": text}, "json": {"image_id": cold.body["image_id"]}}
            out["text_miss"] = client.post("/segment/refine", "hit", **by_id)
            out["text_hit"] = client.post("/segment/refine", "hit", **by_id)
        out["embed"].append(client.post("/embed", "miss", files=multipart(jpeg(seed + 1))))
        before = client.encoder_runs()
        refine = client.post(
            "/segment/refine", "miss", params={"text": text}, files=multipart(jpeg(seed + 2))
        )
        out["refine_encoder_runs"].append(client.encoder_runs() - before)
        out["refine"].append(refine)
    out["cached"] = [
        client.post(
            "/segment/prompt",
            "hit",
            json={"image_id": out["cold_image_id"], "prompts": point_prompt(1000 + i, w, h)},
        )
        for i in range(args.cached_repeats)
    ]
    return out


def med(values: list[float]) -> float:
    return float(statistics.median(values))


def stage_medians(samples: list[Sample]) -> dict[str, float]:
    """Median ms of every Server-Timing stage seen in samples (0 where a sample lacks the stage)."""
    names = dict.fromkeys(name for s in samples for name in s.stages)
    return {name: round(med([s.stage(name) for s in samples]), 2) for name in names}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians (ms) and ratios from the raw Samples of one run."""
    cold, cached, embed, refine = raw["cold"], raw["cached"], raw["embed"], raw["refine"]
    stage = lambda samples, name: med([s.stage(name) for s in samples])  # noqa: E731
    result = {
        "cold_ms": med([s.wall_ms for s in cold]),
        "cold_ms_all": [round(s.wall_ms, 2) for s in cold],
        "cached_prompt_ms": med([s.wall_ms for s in cached]),
        "embed_ms": med([s.wall_ms for s in embed]),
        "refine_new_image_ms": med([s.wall_ms for s in refine]),
        "encoder_stage_embed_ms": stage(embed, "encoder"),
        "encoder_stage_refine_ms": stage(refine, "encoder"),
        "encoder_runs_per_refine": med(raw["refine_encoder_runs"]),
        "text_miss_stage_ms": raw["text_miss"].stage("text"),
        "text_miss_request_ms": raw["text_miss"].wall_ms,
        "text_hit_request_ms": raw["text_hit"].wall_ms,
        "overhead_cached_ms": med([s.overhead_ms for s in cached]),
        "overhead_cold_ms": med([s.overhead_ms for s in cold]),
        "decoder_cached_ms": stage(cached, "decoder"),
        "postprocess_cached_ms": stage(cached, "postprocess"),
        "transport_cached_ms": med([s.wall_ms - s.stage("total") for s in cached]),
        "decode_cold_ms": stage(cold, "decode"),
        "preprocess_cold_ms": stage(cold, "preprocess"),
        "queue_cold_ms": stage(cold, "queue"),
        "postprocess_cold_ms": stage(cold, "postprocess"),
        "transport_cold_ms": med([s.wall_ms - s.stage("total") for s in cold]),
    }
    result["text_miss_cost_ms"] = result["text_miss_request_ms"] - result["text_hit_request_ms"]
    result["cached_over_cold"] = result["cached_prompt_ms"] / result["cold_ms"]
    result["cold_over_cached"] = result["cold_ms"] / result["cached_prompt_ms"]
    result["refine_over_embed"] = result["refine_new_image_ms"] / result["embed_ms"]
    result["overhead_cold_fraction"] = result["overhead_cold_ms"] / result["cold_ms"]
    result["refine_extra_over_embed_ms"] = result["refine_new_image_ms"] - result["embed_ms"]
    kinds = {"cold": cold, "cached": cached, "embed": embed, "refine": refine}
    result["stages_ms"] = {kind: stage_medians(samples) for kind, samples in kinds.items()}
    result["stages_ms"]["text_miss"] = stage_medians([raw["text_miss"]])
    return result


def _notes(res: dict[str, Any]) -> dict[str, str]:
    """The notes column of the table (ratios and the stages behind each figure)."""
    r = {k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in res.items()}
    rs = res["stages_ms"]["refine"]
    return {
        "cached": f"ratio to cold {res['cached_over_cold']:.4f} ({res['cold_over_cached']:.1f}x faster)",
        "embed": f"server encoder stage {r['encoder_stage_embed_ms']} ms",
        "refine": f"refine/embed {res['refine_over_embed']:.3f}; "
        f"encoder runs/request {res['encoder_runs_per_refine']:g}; "
        f"server encoder stage {r['encoder_stage_refine_ms']} ms; +{r['refine_extra_over_embed_ms']} ms: "
        f"head {rs.get('head', 0.0):.1f}, decoder {rs.get('decoder', 0.0):.1f}, "
        f"postprocess {rs.get('postprocess', 0.0):.1f}",
        "text": f"Server-Timing text stage; request {r['text_miss_request_ms']} ms vs "
        f"{r['text_hit_request_ms']} ms text-cached = +{r['text_miss_cost_ms']} ms",
        "ov_cached": f"wall - decoder {r['decoder_cached_ms']}; postprocess {r['postprocess_cached_ms']}, "
        f"transport {r['transport_cached_ms']}",
        "ov_cold": f"{100 * res['overhead_cold_fraction']:.1f}% of cold; decode {r['decode_cold_ms']}, "
        f"preprocess {r['preprocess_cold_ms']}, queue {r['queue_cold_ms']}, "
        f"postprocess {r['postprocess_cold_ms']}, transport {r['transport_cold_ms']}",
    }


def print_table(res: dict[str, Any]) -> None:
    notes = _notes(res)
    rows = [
        ("cold /segment/prompt, new image", res["cold_ms"], "encoder + decoder + everything"),
        ("cached /segment/prompt, same image_id", res["cached_prompt_ms"], notes["cached"]),
        ("encoder-only /embed, new image", res["embed_ms"], notes["embed"]),
        ("/segment/refine, new image (text cached)", res["refine_new_image_ms"], notes["refine"]),
        ("text-cache miss (first use of the text)", res["text_miss_stage_ms"], notes["text"]),
        ("server overhead, cached prompt", res["overhead_cached_ms"], notes["ov_cached"]),
        ("server overhead, cold prompt", res["overhead_cold_ms"], notes["ov_cold"]),
    ]
    print(
        f"\nservice latency (medians): model {res['model']}, backend {res['backend']}, image {res['image']}, "
        f"repeats {res['repeats']} (cached {res['cached_repeats']}), cpus {res['cpus']}"
    )
    print(f"{'measurement':<44} {'ms':>10}  notes")
    print("-" * 120)
    for name, ms, note in rows:
        print(f"{name:<44} {ms:>10.1f}  {note}")


def _ints(text: str) -> list[int]:
    return sorted({int(v) for v in text.split(",") if v.strip()})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("/tmp/bundles/vit_b"), help="bundle directory")
    p.add_argument(
        "--backend",
        default=os.environ.get("SAMCLIP_BACKEND"),
        help="default: the server's own (backend=auto)",
    )
    p.add_argument("--repeats", type=int, default=2, help="new images per cold / embed / refine figure")
    p.add_argument("--cached-repeats", type=int, default=10, help="cached prompt-segment calls")
    p.add_argument("--width", type=int, default=2250)
    p.add_argument("--height", type=int, default=1500)
    p.add_argument("--photo-width", type=int, default=4000, help="photo for the post-processing figures")
    p.add_argument("--photo-height", type=int, default=3000)
    p.add_argument("--boxes", type=_ints, default=[1, 2, 4], help="box counts of the cached prompt figure")
    p.add_argument("--no-offline", action="store_true", help="skip the in-process parity / official figures")
    p.add_argument("--text", default="a dog", help="text for /segment/refine")
    p.add_argument("--seed", type=int, default=0, help="first image seed")
    p.add_argument("--port", type=int, default=0, help="server port (0 = a free one)")
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for /readyz")
    p.add_argument("--request-timeout", type=float, default=1800.0, help="client timeout per request (s)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.cached_repeats < 1:
        raise SystemExit("--repeats and --cached-repeats must be >= 1")
    if not Manifest.exists(args.bundle):
        raise SystemExit(
            f"no bundle at {args.bundle}; export one with `python -m model_export export --model vit_b "
            f"--random-init --seed 0 --out {args.bundle}`"
        )
    model = Manifest.read(args.bundle).model.name
    ports = [args.port or free_port(), free_port()]
    servers = [(ports[0], {}), (ports[1], PREVIOUS_PATH)]
    with running_servers(args.bundle, args.backend, servers, args.startup_timeout) as (url, old_url):
        client, old = Client(url, args.request_timeout), Client(old_url, args.request_timeout)
        try:
            served = client.http.get("/info").json()["backend"]
            raw = run_requests(client, args)
            interactive = measure(client, old, args, make_jpeg)
        finally:
            client.close()
            old.close()
    photo = (args.photo_height, args.photo_width)
    offline = (
        {} if args.no_offline else figures(args.bundle, (args.height, args.width), args.cached_repeats, photo)
    )
    result = {
        "model": model, "backend": served["name"], "requested_backend": args.backend or "(server default)",
        "selection": served.get("details", {}).get("selection"), "bundle": str(args.bundle),
        "image": f"{args.width}x{args.height} JPEG", "repeats": args.repeats,
        "cached_repeats": args.cached_repeats, "cpus": len(os.sched_getaffinity(0)),
        **summarize(raw), "interactive": interactive, "offline": offline,
    }  # fmt: skip
    print_table(result)
    print_figures(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
