"""HTTP figures of the interactive path for benchmarks/service_latency.py (issue 16), measured against TWO
servers at once: `new` (the default serve path) and `old` (the same server with the path before issue 16:
SAMCLIP_DECODER_VARIANT=none, SAMCLIP_OPENVINO_DECODER_SHAPES=0, SAMCLIP_CACHE_DTYPE=float32,
SAMCLIP_POSTPROCESS=plain; `PREVIOUS_PATH`). Requests go to the two in blocks (new, old, new, old: `_pair`), so
drift in the shared machine's load hits both alike; every figure is a median, ratios are new / old.

- cached prompt: one image of --width x --height (default 2250 x 1500) uploaded once to each; then K boxes per
  POST /segment/prompt by image_id (JSON), K in --boxes (default 1, 2, 4); each K is warmed first (a new
  (K, N) compiles its box specialisation on its first call) and every request has new boxes. Per extra box:
  (t(K_max) - t(1)) / (K_max - 1). Then the 1-box request at a clicking user's pace (`paced_prompts`): each one
  PACE_S after the previous response, so both servers start it idle. Measured in process (2 cores, one run): the
  decoder +2.4 ms and the post-processing +1.7 ms against back-to-back requests, the latter also with OpenCV
  on one thread, and one request 10 ms before does not remove it: the machine's clock and caches after idle, not
  the process's threads.
- photo post-processing: a --photo-width x --photo-height (default 4000 x 3000) JPEG, cached; the Server-Timing
  `postprocess` stage of POST /segment?text=T, /segment/refine?text=T and a 1-box /segment/prompt (text
  embeddings cached by a first call), and 3 concurrent refines on it (wall time each, median).
- bytes per entry: samclip_cache_entry_bytes_sum / _count from each server's /metrics.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PREVIOUS_PATH = {
    "SAMCLIP_DECODER_VARIANT": "none",
    "SAMCLIP_OPENVINO_DECODER_SHAPES": "0",
    "SAMCLIP_CACHE_DTYPE": "float32",
    "SAMCLIP_POSTPROCESS": "plain",
}
WARM_PER_BLOCK = 2
"""Calls not kept before each block of `_pair`."""
PACE_S = 0.25
"""Idle time before each paced request: a user clicking through an image (`paced_prompts`)."""
_METRIC_RE = r"^{name}(?:\{{[^}}]*\}})?\s+([0-9.eE+-]+)\s*$"


def boxes(k: int, seed: int, width: int, height: int) -> list[dict[str, Any]]:
    """K box prompts (original pixels), different for every seed."""
    out = []
    for j in range(k):
        x0 = (width * 0.1 + 53.0 * seed + 97.0 * j) % (width * 0.6)
        y0 = (height * 0.1 + 31.0 * seed + 59.0 * j) % (height * 0.6)
        out.append(
            {"box": [round(x0, 1), round(y0, 1), round(x0 + width * 0.3, 1), round(y0 + height * 0.3, 1)]}
        )
    return out


def metric(client: Any, name: str) -> float:
    """One sample of the server's /metrics (the first series of that name), NaN when absent."""
    match = re.search(_METRIC_RE.format(name=re.escape(name)), client.http.get("/metrics").text, re.M)
    return float(match.group(1)) if match else float("nan")


def _upload(client: Any, jpeg: bytes) -> str:
    return client.post("/embed", files={"image": ("photo.jpg", jpeg, "image/jpeg")}).body["image_id"]


def _pair(new: Any, old: Any, call: Any, repeats: int, warm: int = WARM_PER_BLOCK) -> dict[str, list[Any]]:
    """call(client, i) -> Sample, `repeats` times per server in blocks: half new, half old, half new, half old,
    each block after `warm` calls that are not kept (i < 0). Blocks, not request by request, and the calls
    before each block: after its last request a server's idle runtime threads spin for a while (OpenVINO,
    OpenCV), and on 2 cores that slows the other server's first requests, which one server per machine never
    sees (measured: see WARM_PER_BLOCK)."""
    out: dict[str, list[Any]] = {"new": [], "old": []}
    half = max(1, repeats // 2)
    for block in range(2):
        for side, client in (("new", new), ("old", old)):
            for j in range(warm):
                call(client, -1 - block * warm - j)
            out[side] += [call(client, block * half + i) for i in range(half)]
    return out


def _med(samples: list[Any], stage: str | None = None) -> float:
    return round(statistics.median(s.wall_ms if stage is None else s.stage(stage) for s in samples), 2)


def _stages(samples: list[Any]) -> dict[str, float]:
    """Medians of a cached prompt's wall time and its decoder / postprocess / render stages."""
    return {"wall_ms": _med(samples), "decoder_ms": _med(samples, "decoder"),
            "postprocess_ms": _med(samples, "postprocess"), "render_ms": _med(samples, "render")}  # fmt: skip


def cached_prompts(new: Any, old: Any, args: Any, jpeg: bytes) -> dict[str, Any]:
    """Cached K-box /segment/prompt on both servers (module docstring)."""
    ids = {"new": _upload(new, jpeg), "old": _upload(old, jpeg)}
    clients = {"new": new, "old": old}
    w, h = args.width, args.height

    def call(client: Any, i: int, k: int) -> Any:
        who = "new" if client is new else "old"
        body = {"image_id": ids[who], "prompts": boxes(k, 1000 * k + i, w, h)}
        return clients[who].post("/segment/prompt", "hit", json=body)

    result: dict[str, Any] = {"boxes": {}}
    for k in args.boxes:
        for i in range(2):  # warm: the first call of a new (K, N) compiles its box specialisation
            call(new, -1 - i, k), call(old, -1 - i, k)
        runs = _pair(new, old, lambda c, i, k=k: call(c, i, k), args.cached_repeats)
        result["boxes"][k] = {side: _stages(s) for side, s in runs.items()}
    result["paced"] = paced_prompts(call, new, old, args.cached_repeats)
    first, last = min(args.boxes), max(args.boxes)
    for side in ("new", "old"):
        spread = result["boxes"][last][side]["wall_ms"] - result["boxes"][first][side]["wall_ms"]
        result[f"extra_box_ms_{side}"] = round(spread / max(1, last - first), 2)
    one = result["boxes"][first]
    result["one_box_ratio"] = round(one["new"]["wall_ms"] / one["old"]["wall_ms"], 3)
    result["extra_box_ratio"] = round(result["extra_box_ms_new"] / max(result["extra_box_ms_old"], 1e-9), 3)
    return result


def paced_prompts(call: Any, new: Any, old: Any, repeats: int, gap_s: float = PACE_S) -> dict[str, Any]:
    """The cached 1-box prompt at a clicking user's pace: each request `gap_s` after the previous one ended
    (the sleep is not timed), so the server has been idle (module docstring)."""

    def paced(client: Any, i: int) -> Any:
        time.sleep(gap_s)
        return call(client, 500 + i, 1)

    runs = _pair(new, old, paced, repeats)
    out: dict[str, Any] = {"gap_ms": round(gap_s * 1e3), **{side: _stages(s) for side, s in runs.items()}}
    out["ratio"] = round(out["new"]["wall_ms"] / out["old"]["wall_ms"], 3)
    return out


def photo_postprocess(new: Any, old: Any, args: Any, jpeg: bytes, text: str) -> dict[str, Any]:
    """Post-processing stages on the photo, and 3 concurrent refines (module docstring)."""
    ids = {"new": _upload(new, jpeg), "old": _upload(old, jpeg)}
    w, h = args.photo_width, args.photo_height

    def by_id(client: Any) -> dict[str, Any]:
        return {"json": {"image_id": ids["new" if client is new else "old"]}}

    calls = {
        "segment_text": lambda c, i: c.post("/segment", "hit", params={"text": text}, **by_id(c)),
        "refine": lambda c, i: c.post("/segment/refine", "hit", params={"text": text}, **by_id(c)),
        "prompt_box": lambda c, i: c.post(
            "/segment/prompt", "hit", json={**by_id(c)["json"], "prompts": boxes(1, i, w, h)}
        ),
    }
    for c in (new, old):  # text embeddings (80 templates) and the CLIP head, once per server
        calls["refine"](c, 0)
    out: dict[str, Any] = {"image": f"{w}x{h} JPEG"}
    repeats = max(2, args.cached_repeats // 2)
    for name, call in calls.items():
        runs = _pair(new, old, call, repeats)
        new_ms, old_ms = _med(runs["new"], "postprocess"), _med(runs["old"], "postprocess")
        out[name] = {"new_postprocess_ms": new_ms, "old_postprocess_ms": old_ms,
                     "new_wall_ms": _med(runs["new"]), "old_wall_ms": _med(runs["old"]),
                     "ratio": round(new_ms / max(old_ms, 1e-9), 3)}  # fmt: skip
    out["concurrent_refines"] = {
        side: _concurrent(c, calls["refine"]) for side, c in (("new", new), ("old", old))
    }
    out["concurrent_refines"]["ratio"] = round(
        out["concurrent_refines"]["new"] / max(out["concurrent_refines"]["old"], 1e-9), 3
    )
    return out


def _concurrent(client: Any, call: Any, n: int = 3) -> float:
    """Median wall ms of n requests sent at once (each on its own connection: a new client like `client`)."""

    def one(i: int) -> float:
        other = type(client)(client.base_url, client.timeout_s)
        try:
            return call(other, i).wall_ms
        finally:
            other.close()

    with ThreadPoolExecutor(n) as pool:
        return round(statistics.median(pool.map(one, range(n))), 2)


def entry_bytes(client: Any) -> dict[str, float]:
    """samclip_cache_entry_bytes mean (sum / count of the histogram) and samclip_cache_bytes."""
    total, count = (
        metric(client, "samclip_cache_entry_bytes_sum"),
        metric(client, "samclip_cache_entry_bytes_count"),
    )
    return {"mean_entry_bytes": round(total / count) if count else float("nan"),
            "cache_bytes": metric(client, "samclip_cache_bytes")}  # fmt: skip


def measure(new: Any, old: Any, args: Any, jpeg: Any) -> dict[str, Any]:
    """Every HTTP figure of the module docstring; jpeg(seed, width, height) -> bytes."""
    prompt = cached_prompts(new, old, args, jpeg(777, args.width, args.height))
    photo = photo_postprocess(new, old, args, jpeg(778, args.photo_width, args.photo_height), args.text)
    sizes = {"new": entry_bytes(new), "old": entry_bytes(old)}
    return {"cached_prompt": prompt, "photo": photo, "entry_bytes": sizes,
            "previous_path": json.dumps(PREVIOUS_PATH)}  # fmt: skip


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, new, previous path, notes) rows of the issue-16 table from the benchmark's JSON result."""
    http, offline = res["interactive"], res.get("offline", {})
    prompt, photo, sizes = http["cached_prompt"], http["photo"], http["entry_bytes"]
    out = []
    for k, sides in prompt["boxes"].items():
        new, old = sides["new"], sides["old"]
        note = (
            f"decoder {_fmt(new['decoder_ms'])} / {_fmt(old['decoder_ms'])}, postprocess "
            f"{_fmt(new['postprocess_ms'])} / {_fmt(old['postprocess_ms'])}, render {_fmt(new['render_ms'])}"
        )
        out.append(
            (f"cached /segment/prompt, {k} box(es), ms", _fmt(new["wall_ms"]), _fmt(old["wall_ms"]), note)
        )
    paced = prompt["paced"]
    new, old = paced["new"], paced["old"]
    out.append(
        (
            f"cached 1 box, {paced['gap_ms']} ms after the last request, ms",
            _fmt(new["wall_ms"]),
            _fmt(old["wall_ms"]),
            f"ratio {paced['ratio']}; decoder {_fmt(new['decoder_ms'])} / {_fmt(old['decoder_ms'])}, postprocess "
            f"{_fmt(new['postprocess_ms'])} / {_fmt(old['postprocess_ms'])}, render {_fmt(new['render_ms'])}",
        )
    )
    out.append(
        (
            "each extra box, ms",
            _fmt(prompt["extra_box_ms_new"]),
            _fmt(prompt["extra_box_ms_old"]),
            f"ratio {prompt['extra_box_ratio']}; 1 box ratio {prompt['one_box_ratio']}",
        )
    )
    for name in ("segment_text", "refine", "prompt_box"):
        fig = photo[name]
        out.append(
            (
                f"{photo['image']} {name} postprocess, ms",
                _fmt(fig["new_postprocess_ms"]),
                _fmt(fig["old_postprocess_ms"]),
                f"ratio {fig['ratio']}; wall {_fmt(fig['new_wall_ms'])} / {_fmt(fig['old_wall_ms'])}",
            )
        )
    conc = photo["concurrent_refines"]
    out.append(
        (
            "3 concurrent refines on the photo, ms each",
            _fmt(conc["new"]),
            _fmt(conc["old"]),
            f"ratio {conc['ratio']}",
        )
    )
    out.append(
        (
            "bytes per cached entry (/metrics)",
            _fmt(sizes["new"]["mean_entry_bytes"]),
            _fmt(sizes["old"]["mean_entry_bytes"]),
            "samclip_cache_entry_bytes sum / count",
        )
    )
    if "decoder_parity" in offline:
        dec, sto = offline["decoder_parity"], offline["storage_parity"]
        out.append(
            (
                "mask IoU, fast path vs fp32 path",
                str(dec["mask_iou"]),
                "1.0",
                f"gate {dec['gate']}; {dec['masks']} masks at original size",
            )
        )
        out.append(
            (
                "float16 vs float32 storage: mask IoU / text IoU",
                f"{sto['mask_iou']} / {sto['text_segment_iou']}",
                "1.0 / 1.0",
                f"gates {sto['mask_gate']} / {sto['text_gate']}; entry bytes {sto['entry_bytes']}",
            )
        )
        off = offline["official"]
        if "skipped" in off:
            out.append(("official SamOnnxModel (ORT), 1 box", "-", "-", off["skipped"]))
        else:
            out.append(
                (
                    "decoder + postprocess in-process, 1 box, ms",
                    _fmt(off["fast_ms"]),
                    _fmt(off["plain_ms"]),
                    f"official SamOnnxModel {_fmt(off['official_onnx_ms'])} ms ({off['official_runtime']}); "
                    f"fast/official {off['fast_over_official']}, fast/plain {off['fast_over_plain']}",
                )
            )
    for fig in offline.get("mask_render", []):
        ms = fig["ms"]
        note = f"per-pixel fast path {_fmt(ms['bitmap'])}"
        if "runs" in ms:
            note = f"runs path; {note} (runs/bitmap {fig['runs_over_bitmap']}, runs/plain {fig['runs_over_plain']})"
        out.append(
            (
                "trained-like mask {}x{}: postprocess + RLE, ms".format(*fig["size"][::-1]),
                _fmt(ms.get("runs", ms["bitmap"])),
                _fmt(ms["plain"]),
                f"{note}; same JSON {fig['same_json']}; {fig['rle_chars']} RLE chars",
            )
        )
    if "floor" in offline:
        out.append(_floor_row(offline["floor"]))
    return out


def _floor_row(fig: dict[str, Any]) -> tuple[str, str, str, str]:
    """The floor per extra box (benchmarks/interactive_floor.py) as a table row."""
    work, wall, floors = fig["one_thread"], fig["default"], fig["floor_ms"]
    return (
        f"floor per extra box on {fig['cpus']} CPUs, random-init / trained-like mask, ms",
        f"{_fmt(floors['random_init'])} / {_fmt(floors['trained_like'])}",
        "-",
        f"work at 1 thread: decoder {_fmt(work['decoder_extra_box_ms'])} core-ms per prompt + finishing "
        f"{_fmt(work['finish_random_init_ms'])} / {_fmt(work['finish_trained_like_ms'])}; in process at the "
        f"default threads: decoder {_fmt(wall['decoder_extra_box_ms'])} + finishing "
        f"{_fmt(wall['finish_random_init_ms'])} / {_fmt(wall['finish_trained_like_ms'])} ms",
    )


def print_figures(res: dict[str, Any]) -> None:
    print(
        f"\ninteractive path (issue 16), medians; previous path = the same server with {res['interactive']['previous_path']}"
    )
    print(f"{'measurement':<50} {'new':>12} {'previous':>12}  notes")
    print("-" * 140)
    for name, new, old, note in rows(res):
        print(f"{name:<50} {new:>12} {old:>12}  {note}")
