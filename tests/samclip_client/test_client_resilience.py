"""The client against real servers that forget images or push back.

- SAMCLIP_CACHE_BYTES=1: the server keeps no embedding, so every request by image_id is a 404; the client
  uploads the image again and the call succeeds (the server's metrics show the 404 and the retried 200).
- A restarted server (empty cache) on the same port: the same, across a real restart.
- SAMCLIP_QUEUE_SIZE=1 under concurrent uploads: some requests get 429 + Retry-After; every call of the
  client still succeeds (the server's metrics show the 429s).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
from client_support import requests_total, scene_image, start_demo_server
from PIL import Image

from loadtests.run import stop_server
from samclip_client import AsyncClient, Client, Retry


def test_404_for_an_evicted_image_is_re_uploaded(server_factory) -> None:
    url = server_factory({"SAMCLIP_CACHE_BYTES": "1"})
    image = scene_image(301)
    with Client(url) as client:
        first = client.embed(image)
        assert first.image_id in client.known  # the next call goes by id
        result = client.segment(image, text="red circle")
    assert result.image_id == first.image_id and not result.cached  # encoded again from the re-upload
    assert requests_total(url, "/segment", 404) == 1
    assert requests_total(url, "/segment", 200) == 1


def test_re_upload_after_a_server_restart(tmp_path: Path) -> None:
    image = scene_image(302)
    proc, url = start_demo_server(tmp_path, None)
    try:
        with Client(url) as client:
            assert not client.embed(image).cached
            stop_server(proc, 30)
            proc, _ = start_demo_server(tmp_path, None, port=int(url.rsplit(":", 1)[1]))
            result = client.refine(image, "red circle")
        assert not result.cached and result.mask.mask.shape == (128, 128)
        assert requests_total(url, "/segment/refine", 404) == 1
        assert requests_total(url, "/segment/refine", 200) == 1
    finally:
        stop_server(proc, 10)


def big_scene_png(seed: int) -> bytes:
    """A 1024 x 1024 PNG of a generated scene (decoding it keeps the server's one queue slot busy a while)."""
    small = scene_image(seed)
    big = np.kron(small, np.ones((8, 8, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    return buf.getvalue()


def test_429_queue_full_is_retried_until_every_call_succeeds(server_factory) -> None:
    url = server_factory({"SAMCLIP_QUEUE_SIZE": "1", "SAMCLIP_MAX_BATCH_SIZE": "1"})
    retry = Retry(attempts=40, total_s=240, backoff_s=0.2, max_backoff_s=2)

    async def burst(images: list[bytes]) -> list[str]:
        async with AsyncClient(url, retry=retry) as client:
            return [r.image_id for r in await asyncio.gather(*(client.embed(d) for d in images))]

    sent = 0
    for round_ in range(3):  # a burst that never overlapped would show no 429: send another
        images = [big_scene_png(400 + 10 * round_ + i) for i in range(8)]
        ids = asyncio.run(burst(images))
        sent += len(images)
        assert ids == [Client.image(d).image_id for d in images]
        if requests_total(url, "/embed", 429) > 0:
            break
    assert requests_total(url, "/embed", 429) > 0
    assert requests_total(url, "/embed", 200) == sent
