"""Retry, re-upload and error handling of the client against a real (scripted) HTTP server.

The scripted server answers from a list, so each test states the exact exchange: 429/503 + Retry-After are
resent no sooner than Retry-After says and within the attempt / time bounds; a 404 `not_found` for an image_id
makes the client upload the image again; other errors raise SamclipError with the service's fields.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import time

import pytest
from client_support import Script, image_json, scripted_server

from samclip_client import AsyncClient, Client, Retry, SamclipError

IMAGE = b"\x89PNG not really, the scripted server does not decode"
IMAGE_ID = hashlib.sha256(IMAGE).hexdigest()
EMBED_OK = (200, {}, image_json(IMAGE_ID))
SEGMENT_OK = (200, {}, image_json(IMAGE_ID, masks=[], background_prompts=["background"]))
NO_JITTER = Retry(jitter_s=0.0)


def error(status: int, error_type: str, headers: dict[str, str] | None = None) -> tuple:
    return (
        status,
        headers or {},
        {"error": f"{error_type} here", "error_type": error_type, "request_id": "r1"},
    )


def is_upload(seen) -> bool:
    return seen.body == IMAGE and seen.headers["Content-Type"] == "application/octet-stream"


def test_429_is_resent_after_retry_after_with_the_image_id_header() -> None:
    script = Script([error(429, "queue_full", {"Retry-After": "1"}), EMBED_OK])
    with scripted_server(script) as url, Client(url, retry=NO_JITTER) as client:
        result = client.embed(IMAGE)
    assert result.image_id == IMAGE_ID
    assert [s.path for s in script.seen] == ["/embed", "/embed"]
    assert all(s.headers["X-Image-Id"] == IMAGE_ID and is_upload(s) for s in script.seen)
    assert script.seen[1].at - script.seen[0].at >= 1.0  # never sooner than Retry-After


def test_503_retries_are_bounded_by_attempts() -> None:
    script = Script(default=error(503, "not_ready", {"Retry-After": "0"}))
    with scripted_server(script) as url, Client(url, retry=Retry(attempts=3)) as client:
        with pytest.raises(SamclipError) as caught:
            client.embed(IMAGE)
    assert (caught.value.status, caught.value.error_type, caught.value.attempts) == (503, "not_ready", 3)
    assert len(script.seen) == 3


def test_a_retry_after_past_the_time_budget_raises_at_once() -> None:
    script = Script(default=error(429, "queue_full", {"Retry-After": "3600"}))
    with scripted_server(script) as url, Client(url, retry=Retry(total_s=30)) as client:
        with pytest.raises(SamclipError) as caught:
            client.embed(IMAGE)
    assert caught.value.status == 429 and len(script.seen) == 1


def test_retry_after_as_an_http_date_and_back_off_without_it() -> None:
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    script = Script([error(503, "draining", {"Retry-After": past}), error(429, "queue_full"), EMBED_OK])
    policy = Retry(backoff_s=0.05, max_backoff_s=0.1)
    with scripted_server(script) as url, Client(url, retry=policy) as client:
        assert client.embed(IMAGE).image_id == IMAGE_ID
    assert len(script.seen) == 3


def test_known_image_goes_by_id_and_a_404_re_uploads_it_once() -> None:
    script = Script([EMBED_OK, error(404, "not_found"), SEGMENT_OK, SEGMENT_OK])
    with scripted_server(script) as url, Client(url, api_key="k3y") as client:
        client.embed(IMAGE)
        client.segment(IMAGE, text=["dog", "cat"])
        client.segment(IMAGE, text="dog")
    first, by_id, again, later = script.seen
    assert is_upload(first) and is_upload(again)
    assert (
        json.loads(by_id.body) == {"image_id": IMAGE_ID}
        and by_id.headers["Content-Type"] == "application/json"
    )
    assert by_id.path == again.path == "/segment?text=dog&text=cat&format=rle"
    assert json.loads(later.body) == {"image_id": IMAGE_ID}  # accepted again: by id
    assert all(s.headers["X-Image-Id"] == IMAGE_ID for s in script.seen)
    assert all(s.headers["Authorization"] == "Bearer k3y" for s in script.seen)


def test_other_404s_and_errors_are_raised_with_the_service_fields() -> None:
    script = Script([EMBED_OK, error(404, "no_such_mask"), error(422, "invalid_input"), (502, {}, b"<html>")])
    with scripted_server(script) as url, Client(url) as client:
        client.embed(IMAGE)
        with pytest.raises(SamclipError) as missing:
            client.segment(IMAGE, text="dog")
        with pytest.raises(SamclipError) as invalid:
            client.classify(IMAGE, labels=[" dog"])
        with pytest.raises(SamclipError) as proxy:
            client.embed(IMAGE)
    assert (missing.value.status, missing.value.error_type) == (404, "no_such_mask")
    assert (invalid.value.error_type, invalid.value.request_id, invalid.value.message) == (
        "invalid_input",
        "r1",
        "invalid_input here",
    )
    assert (proxy.value.status, proxy.value.error_type) == (502, "http_error")
    assert len(script.seen) == 4  # the 404 no_such_mask was not a reason to upload again


def test_prompt_upload_is_multipart_with_the_prompt_fields() -> None:
    ok = (200, {}, image_json(IMAGE_ID, prompts=[]))
    script = Script([ok, ok])
    with scripted_server(script) as url, Client(url) as client:
        client.prompt(IMAGE, points=[(1, 2), (3, 4, 0)], boxes=[(0, 0, 2, 2)], multimask=True)
        client.prompt(IMAGE, box=(0, 0, 3, 3))
    upload, by_id = script.seen
    assert upload.headers["Content-Type"].startswith("multipart/form-data")
    assert b'name="image"' in upload.body and IMAGE in upload.body
    assert json.loads(by_id.body) == {
        "image_id": IMAGE_ID,
        "prompts": [{"points": [], "box": [0.0, 0.0, 3.0, 3.0]}],
        "multimask": False,
    }


def test_async_client_retries_and_re_uploads_the_same_way() -> None:
    script = Script(
        [error(429, "queue_full", {"Retry-After": "1"}), EMBED_OK, error(404, "not_found"), SEGMENT_OK]
    )

    async def run(url: str) -> None:
        async with AsyncClient(url, retry=NO_JITTER) as client:
            await client.embed(IMAGE)
            await client.segment(IMAGE, text="dog")

    with scripted_server(script) as url:
        asyncio.run(run(url))
    assert [is_upload(s) for s in script.seen] == [True, True, False, True]
    assert script.seen[1].at - script.seen[0].at >= 1.0
