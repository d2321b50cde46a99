"""The cost of a Redis hit against a re-encode, measured in one run on two replicas A and B (no proxy).

Per round and image kind (a 640x480 drawing, a 12 MP photo), all three requests are POST /embed of the same
number of bytes on replica B, so they differ only in where the embedding comes from:
- re-encode: bytes no tier holds -> decode + preprocess + encoder (what a client pays after a 404);
- Redis hit: bytes embedded on replica A a moment before -> B's memory tier misses, Redis has it;
- memory hit: the same bytes again on B -> its own L1.
Reported: medians of the service's `Server-Timing` total and of the client's latency, how many "Redis hit"
requests really skipped the encoder (no `encoder` stage in Server-Timing) and the bytes one Redis hit moved. Entries are published to Redis in
the background after the encode, so the probe waits `publish_wait_s` between A and B.
"""

from __future__ import annotations

import statistics
import time

import httpx

from loadtests.cluster.metrics import delta, scrape, total
from loadtests.images import image_id, make_image, photo, unique_jpeg


def server_timing(header: str | None) -> dict[str, float | str]:
    """'decode;dur=1.5, cache;desc="hit", total;dur=9' -> {"decode": 1.5, "cache": "hit", "total": 9.0}."""
    out: dict[str, float | str] = {}
    for part in (header or "").split(","):
        name, *params = [p.strip() for p in part.split(";")]
        for param in params:
            key, _, value = param.partition("=")
            if key == "dur":
                out[name] = float(value)
            elif key == "desc":
                out[name] = value.strip('"')
    return out


def _embed(client: httpx.Client, url: str, data: bytes) -> dict:
    start = time.perf_counter()
    response = client.post(
        f"{url}/embed", content=data, headers={"Content-Type": "image/jpeg", "X-Image-Id": image_id(data)}
    )
    client_ms = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    timing = server_timing(response.headers.get("server-timing"))
    return {
        "client_ms": client_ms,
        "server_ms": float(timing.get("total", client_ms)),
        "encoded": "encoder" in timing,
    }


def _median(rows: list[dict], key: str) -> float | None:
    return round(statistics.median(row[key] for row in rows), 2) if rows else None


def measure(url_a: str, url_b: str, rounds: int = 6, publish_wait_s: float = 0.2) -> dict:
    """{kind: {path: {"server_ms", "client_ms", "n"}, "redis_hits_without_encoder": n, "ratio_...": x}}."""
    bases = {"640x480": make_image(987_654), "photo_12mp": photo(2, (4000, 3000))}
    out: dict = {}
    count = int(time.time() * 1000)
    with httpx.Client(timeout=60) as client:
        for kind, base in bases.items():
            scraped = scrape(url_b)
            paths: dict[str, list[dict]] = {"reencode": [], "redis_hit": [], "memory_hit": []}
            for round_ in range(rounds + 1):  # round 0 warms up both replicas
                fresh, shared = unique_jpeg(base, count), unique_jpeg(base, count + 1)
                count += 2
                encoded = _embed(client, url_b, fresh)
                _embed(client, url_a, shared)
                time.sleep(publish_wait_s)
                from_redis = _embed(client, url_b, shared)
                from_memory = _embed(client, url_b, shared)
                if round_:
                    paths["reencode"].append(encoded)
                    paths["redis_hit"].append(from_redis)
                    paths["memory_hit"].append(from_memory)
            figures = {
                path: {
                    "server_ms": _median(rows, "server_ms"),
                    "client_ms": _median(rows, "client_ms"),
                    "n": len(rows),
                }
                for path, rows in paths.items()
            }
            figures["redis_hits_without_encoder"] = sum(not row["encoded"] for row in paths["redis_hit"])
            moved = delta(scrape(url_b), scraped)  # includes the warm-up round
            hits = total(moved, "samclip_embedding_lookups_total", tier="redis", result="hit")
            read = total(moved, "samclip_redis_bytes_total", direction="read")
            figures["redis_bytes_per_hit"] = int(read / hits) if hits else None
            encode, redis = figures["reencode"]["server_ms"], figures["redis_hit"]["server_ms"]
            figures["redis_over_reencode_server"] = round(redis / encode, 3) if encode else None
            out[kind] = figures
    return out
