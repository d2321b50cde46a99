"""`samclip`: the command line of samclip_client.

    samclip label IMAGES... --text T [--text T2] [--instances] --url URL --out coco.json

IMAGES are files or folders (searched recursively for image files). Each image is sent once (one request
carries every text) by `--concurrency` concurrent requests, with a tqdm progress bar; 429/503 are retried
(Retry-After). Results are appended to `<out>.state.jsonl` as they finish, and `--out` (COCO instances JSON,
see coco.py) is written at the end, also after Ctrl-C or a failure, so re-running the same command skips what
is done. Exit status: 0 all labelled, 1 some images failed (listed; re-run to retry them), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from samclip_client.client import AsyncClient
from samclip_client.coco import LabelState, StateMismatch, header, image_record
from samclip_client.errors import SamclipError
from samclip_client.images import as_image
from samclip_client.retry import Retry

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
FATAL_STATUSES = frozenset({401, 403})
"""Answers that would be the same for every image (as is error_type "unsupported": a server without
instances): stop the run instead of failing each image."""


class Fatal(Exception):
    """Stop labelling: the server cannot be reached or refuses this client."""


def image_files(inputs: Sequence[str]) -> list[str]:
    """Files as given, folders expanded to their image files (sorted, recursive); duplicates dropped."""
    out: dict[str, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = (p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            out |= dict.fromkeys(os.path.normpath(p) for p in found)
        else:
            out[os.path.normpath(item)] = None
    return list(out)


async def _label_one(client: AsyncClient, path: str, args: argparse.Namespace) -> Any:
    image = await asyncio.to_thread(as_image, path)
    if args.instances:
        return await client.instances(image, args.text, args.min_area, args.max_instances)
    return await client.segment(image, args.text)


async def label(args: argparse.Namespace, paths: list[str], state: LabelState, bar: tqdm) -> list[str]:
    """Label `paths` with `--concurrency` workers, appending each result to `state`; the failures as
    "path: reason" lines. Raises Fatal (after the workers stop) when the server is unreachable or refuses."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    failures: list[str] = []
    retry = Retry(attempts=args.retry_attempts, total_s=args.retry_seconds)

    async def worker(client: AsyncClient) -> None:
        while not queue.empty():
            path = queue.get_nowait()
            try:
                result = await _label_one(client, path, args)
            except SamclipError as exc:
                if exc.status in FATAL_STATUSES or exc.error_type == "unsupported":
                    raise Fatal(str(exc)) from None
                failures.append(f"{path}: {exc}")
            except httpx.TransportError as exc:
                raise Fatal(f"cannot reach {args.url}: {exc!r}") from None
            except (OSError, ValueError, TypeError) as exc:
                failures.append(f"{path}: {exc}")
            else:
                state.append(image_record(path, result, args.text))
            bar.update(1)

    async with AsyncClient(args.url, args.api_key, retry=retry, timeout=args.timeout) as client:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(args.concurrency, max(1, len(paths)))):
                group.create_task(worker(client))
    return failures


def run_label(args: argparse.Namespace) -> int:
    texts = [t.strip() for t in args.text]
    if len(set(texts)) != len(texts) or not all(texts):
        raise SystemExit("samclip label: --text values must be non-blank and unique")
    args.text = texts
    paths = image_files(args.images)
    if not paths:
        raise SystemExit("samclip label: no image files found")
    options = {"min_area": args.min_area, "max_instances": args.max_instances} if args.instances else {}
    try:
        state = LabelState(Path(args.out), header(texts, args.instances, options))
    except StateMismatch as exc:
        raise SystemExit(f"samclip label: {exc}") from None
    todo = [p for p in paths if p not in state.done]
    failures: list[str] = []
    fatal = None
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), unit="img", disable=args.no_progress)
    try:
        failures = asyncio.run(label(args, todo, state, bar))
    except* Fatal as group:
        fatal = str(group.exceptions[0])
    finally:
        bar.close()
        coco = state.write_coco()
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    print(
        f"{len(todo) - len(failures)} labelled, {len(paths) - len(todo)} already done, {len(failures)} failed; "
        f"{len(coco['images'])} images and {len(coco['annotations'])} annotations in {args.out}",
        file=sys.stderr,
    )
    if fatal:
        print(f"stopped: {fatal}", file=sys.stderr)
    return 1 if failures or fatal else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="samclip", description="samclip-serve client tools")
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("label", help="label images into COCO instances JSON", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    p.add_argument("--text", action="append", required=True, help="a category (repeat for several)")
    p.add_argument("--instances", action="store_true", help="one annotation per object, not per text")
    p.add_argument("--min-area", type=int, help="--instances: smallest instance in pixels (server default)")
    p.add_argument("--max-instances", type=int, help="--instances: most instances per text (server default)")
    p.add_argument("--url", default=os.environ.get("SAMCLIP_URL", "http://127.0.0.1:8000"),
                   help="server URL (env SAMCLIP_URL; default %(default)s)")  # fmt: skip
    p.add_argument("--api-key", default=os.environ.get("SAMCLIP_API_KEY"), help="env SAMCLIP_API_KEY")
    p.add_argument("--out", required=True, help="COCO JSON to write (resumes from <out>.state.jsonl)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    p.add_argument("--retry-attempts", type=int, default=8, help="requests per image on 429/503")
    p.add_argument("--retry-seconds", type=float, default=300.0, help="retry time budget per image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_label)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "concurrency", 1) < 1:
        raise SystemExit("samclip: --concurrency must be >= 1")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
