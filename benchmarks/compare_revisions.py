"""Compare the service's request path at two git revisions in ONE run (ratios, interleaved, same machine).

    python benchmarks/compare_revisions.py --base 611e9cb --bundle training/demo_bundle --rounds 15

Each revision is checked out into a temporary git worktree and served by `python -m service` from that tree (same
venv, same backend, same bundle files); the bundle is given to the older tree with the manifest format it reads,
when only that differs. Then the same request sequence is sent to both servers in alternation, `--rounds` times:

- embed_new: POST /embed of a new 1500x1000 JPEG (decode + encoder);
- prompt_cached: POST /segment/prompt, 1 box, by image_id (decoder + post-processing);
- text_cached: POST /segment?text=..., by image_id (CLIP head memoised, text cached after round 1);
- refine_cached: POST /segment/refine?text=..., by image_id.

It prints the median milliseconds per request for each revision and their ratio (head / base).
Revisions before the request-model change took fields from a JSON body, later ones from the query: each
request is written for the revision it goes to.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/compare_revisions.py` from anywhere
    sys.path.insert(0, str(ROOT))

from loadtests.run import free_port, wait_ready  # noqa: E402


def jpeg(seed: int, size: tuple[int, int] = (1500, 1000)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bundle_for(tree: Path, bundle: Path, work: Path) -> Path:
    """`bundle`, or a copy whose manifest says the format version `tree`'s code reads (files unchanged)."""
    code = (tree / "service" / "bundle.py").read_text()
    wants_v1 = "FORMAT_VERSION = 1" in code
    manifest = json.loads((bundle / "manifest.json").read_text())
    if not wants_v1 or manifest.get("format_version") == 1:
        return bundle
    copy = work / "bundle-v1"
    shutil.copytree(bundle, copy)
    manifest["format_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


def serve(tree: Path, bundle: Path, backend: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMCLIP_")}
    env.update(PYTHONPATH=str(tree), SAMCLIP_BACKEND=backend, SAMCLIP_VARIANT="none", SAMCLIP_QUEUE_SIZE="64")
    cmd = [
        sys.executable,
        "-m",
        "service",
        "--bundle",
        str(bundle),
        "--port",
        str(port),
        "--log-level",
        "WARNING",
    ]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, timeout_s=600)
    except Exception:
        proc.kill()
        raise
    return proc, base


def one_round(client: httpx.Client, new_contract: bool, seed: int, text: str) -> dict[str, float]:
    """The four requests of one round; milliseconds each."""
    times: dict[str, float] = {}

    def timed(name: str, *args, **kwargs) -> httpx.Response:
        start = time.perf_counter()
        response = client.post(*args, **kwargs)
        times[name] = (time.perf_counter() - start) * 1000.0
        response.raise_for_status()
        return response

    image_id = timed(
        "embed_new", "/embed", content=jpeg(seed), headers={"Content-Type": "image/jpeg"}
    ).json()["image_id"]
    by_id = {"image_id": image_id}
    timed("prompt_cached", "/segment/prompt", json={**by_id, "boxes": [[300, 200, 900, 700]]})
    if new_contract:
        timed("text_cached", "/segment", params={"text": text}, json=by_id)
        timed("refine_cached", "/segment/refine", params={"text": text}, json=by_id)
    else:
        timed("text_cached", "/segment", json={**by_id, "text": [text]})
        timed("refine_cached", "/segment/refine", params={"text": text, "image_id": image_id})
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the older revision (e.g. a commit id)")
    parser.add_argument(
        "--head", default="HEAD", help="the newer revision (default HEAD; WORKTREE = this tree)"
    )
    parser.add_argument("--bundle", type=Path, default=ROOT / "training" / "demo_bundle")
    parser.add_argument(
        "--backend", default="onnxruntime", help="the same backend for both (default onnxruntime)"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--text", default="red circle")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="samclip-revs-"))
    trees, procs = {}, []
    try:
        for name, rev in (("base", args.base), ("head", args.head)):
            if rev == "WORKTREE":
                trees[name] = ROOT
                continue
            trees[name] = work / name
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[name]), rev], cwd=ROOT, check=True,
                           capture_output=True)  # fmt: skip
        clients = {}
        for name, tree in trees.items():
            proc, base = serve(tree, bundle_for(tree, args.bundle.resolve(), work), args.backend)
            procs.append(proc)
            new = (tree / "service" / "routes" / "requests.py").is_file()
            clients[name] = (httpx.Client(base_url=base, timeout=600), new)
        samples: dict[str, dict[str, list[float]]] = {n: {} for n in clients}
        for r in range(args.rounds):
            for name, (client, new) in clients.items():  # alternate: both see the same machine state
                for stage, ms in one_round(client, new, 1000 + r, args.text).items():
                    samples[name].setdefault(stage, []).append(ms)
        print(f"{'request':<16}{'base ms':>10}{'head ms':>10}{'head/base':>11}   (medians of {args.rounds})")
        for stage in samples["base"]:
            b, h = statistics.median(samples["base"][stage]), statistics.median(samples["head"][stage])
            print(f"{stage:<16}{b:>10.1f}{h:>10.1f}{h / b:>11.3f}")
    finally:
        for proc in procs:
            proc.terminate()
        for tree in trees.values():
            if tree != ROOT:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True
                )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
