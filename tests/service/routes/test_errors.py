"""Every error path through the real app: JSON {"error", "error_type", "request_id"}, the right status, never a
500 on bad input, and the server still serving afterwards. Everything runs the real engine on the real tiny
bundle; a slowed-down, held or failing wrapper around the real backend makes 429/504/503/500 reachable."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import backend_factory, png_bytes, ready_client, slow_factory, wait_status

from service.main import create_app
from service.settings import Settings

PNG = {"Content-Type": "image/png"}


def assert_error(response, status: int, error_type: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type", "request_id"}, body
    assert body["request_id"] == response.headers["X-Request-ID"]
    if error_type is not None:
        assert body["error_type"] == error_type, body
    return body


@pytest.fixture(scope="module")
def fake_client(tiny_bundle: Path) -> Iterator[TestClient]:
    settings = Settings(
        bundle=tiny_bundle, max_body_bytes=100_000, max_form_fields=8, max_form_part_bytes=10_000
    )
    with TestClient(create_app(settings)) as client:
        assert wait_status(client, {"ready"})["status"] == "ready"
        yield client


# --- transport ---------------------------------------------------------------------------------------------------
def test_request_id_is_echoed_or_generated(fake_client: TestClient) -> None:
    assert (
        fake_client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    )
    generated = fake_client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers[
        "X-Request-ID"
    ]
    assert generated != "bad id with spaces" and len(generated) == 32
    body = assert_error(fake_client.get("/nope", headers={"X-Request-ID": "rid-404"}), 404, "not_found")
    assert body["request_id"] == "rid-404"


def test_404_and_405(fake_client: TestClient) -> None:
    assert_error(fake_client.get("/does-not-exist"), 404, "not_found")
    assert_error(fake_client.get("/embed"), 405, "method_not_allowed")


def test_400_no_image_and_empty_bodies(fake_client: TestClient) -> None:
    assert_error(fake_client.post("/embed"), 400, "bad_request")
    assert_error(fake_client.post("/embed", content=b"", headers=PNG), 400, "bad_request")
    files = {"image": ("x.png", b"", "image/png")}
    assert_error(fake_client.post("/embed", files=files), 400, "bad_request")
    assert_error(fake_client.post("/embed", data={"image": "not a file"}, files={"x": ("a", b"1")}), 422)
    assert_error(fake_client.post("/embed", files={"photo": ("x.png", png_bytes(16, 16), "image/png")}), 422)


def test_413_content_length_and_chunked(fake_client: TestClient) -> None:
    big = b"\x89PNG" + b"0" * 200_000
    assert_error(fake_client.post("/embed", content=big, headers=PNG), 413, "payload_too_large")
    chunks = iter([b"0" * 30_000] * 10)  # no Content-Length: Transfer-Encoding chunked
    assert_error(fake_client.post("/embed", content=chunks, headers=PNG), 413, "payload_too_large")
    files = {"image": ("x.png", big, "image/png")}
    assert_error(fake_client.post("/embed", files=files), 413, "payload_too_large")
    assert fake_client.get("/healthz").status_code == 200


def test_413_stream_is_cut_before_it_is_all_read(tiny_bundle: Path) -> None:
    """At the ASGI level: a chunked body is abandoned at the limit, later chunks are never pulled."""
    settings = Settings(bundle=tiny_bundle, max_body_bytes=50_000)
    app = create_app(settings)
    pulled, sent = [], []

    async def receive() -> dict:
        pulled.append(1)
        return {"type": "http.request", "body": b"0" * 10_000, "more_body": len(pulled) < 1000}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/embed",
        "raw_path": b"/embed",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"image/png"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    with TestClient(app) as client:
        wait_status(client, {"ready"})
        client.portal.call(app, scope, receive, send)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error_type"] == "payload_too_large"
    assert len(pulled) <= 6, "stopped reading right after passing 50 kB"


def test_415_wrong_content_type_and_encoding(fake_client: TestClient) -> None:
    assert_error(fake_client.post("/embed", content=b"hello", headers={"Content-Type": "text/plain"}), 415)
    headers = {"Content-Type": "image/png", "Content-Encoding": "gzip"}
    assert_error(fake_client.post("/embed", content=b"\x1f\x8b...", headers=headers), 415)


def test_422_bad_parameters(fake_client: TestClient) -> None:
    image = png_bytes(32, 24)
    files = {"image": ("x.png", image, "image/png")}
    assert_error(fake_client.post("/segment?text=dog&format=jpeg", files=files), 422, "invalid_input")
    assert_error(fake_client.post("/segment", files=files), 422, "invalid_input")  # no text
    assert_error(fake_client.post("/classify?labels=a&labels=a", files=files), 422)  # duplicate labels
    assert_error(fake_client.post("/classify?labels=a&top_k=0", files=files), 422)
    assert_error(fake_client.post("/segment/refine?text=a&num_points=0", files=files), 422)
    assert_error(fake_client.post("/segment/refine?text=a&text=b", files=files), 422)
    assert_error(
        fake_client.post("/classify", content=b"{not json", headers={"Content-Type": "application/json"}), 422
    )
    assert_error(fake_client.post("/classify?labels=a", json=["a", "b"]), 422)
    assert_error(fake_client.post("/classify?labels=a", json={"image_id": "x"}), 422)  # not a sha256 hex
    assert_error(fake_client.post("/classify?labels=a", json={}), 422)  # no image_id
    assert_error(fake_client.post("/classify?labels=%20a", files=files), 422)  # surrounding white space
    assert_error(fake_client.post("/segment?text=dog&index=-1", files=files), 422)
    assert_error(fake_client.post("/segment/refine?text=dog&return_points=maybe", files=files), 422)
    assert_error(fake_client.post("/segment?text=dog&format=png&index=5", files=files), 404, "no_such_mask")


def test_multipart_field_floods_are_refused(fake_client: TestClient) -> None:
    many = {f"f{i}": "x" for i in range(300)}  # ~30 kB: under the body limit, over max_form_fields
    assert_error(fake_client.post("/embed", data=many, files={"image": ("x.png", png_bytes(16, 16))}), 400)
    huge = {"prompts": "x" * 50_000}
    assert_error(
        fake_client.post("/segment/prompt", data=huge, files={"image": ("x.png", png_bytes(16, 16))}), 400
    )
    assert fake_client.get("/healthz").status_code == 200


def test_401_api_key(tiny_bundle: Path) -> None:
    app = create_app(Settings(bundle=tiny_bundle, api_key="k3y"))
    image = png_bytes(32, 24)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert wait_status(client, {"ready"})["status"] == "ready"  # /readyz open too
        assert_error(client.post("/embed", content=image, headers=PNG), 401, "unauthorized")
        assert_error(client.post("/embed", content=image, headers={**PNG, "X-API-Key": "wrong"}), 401)
        assert_error(client.get("/info", headers={"Authorization": "Bearer nope"}), 401)
        assert client.post("/embed", content=image, headers={**PNG, "X-API-Key": "k3y"}).status_code == 200
        assert (
            client.post("/embed", content=image, headers={**PNG, "Authorization": "Bearer k3y"}).status_code
            == 200
        )
        assert client.get("/info", headers={"Authorization": "Bearer k3y"}).status_code == 200


def test_503_before_ready_and_after_failed_start(tiny_bundle: Path) -> None:
    gate = threading.Event()
    app = create_app(Settings(bundle=tiny_bundle), backend_factory=backend_factory(gate=gate))
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        body = assert_error(client.post("/embed", content=png_bytes(16, 16), headers=PNG), 503, "not_ready")
        assert "loading" in body["error"] and body and int(client.post("/embed").headers["Retry-After"]) >= 1
        assert client.get("/healthz").status_code == 200
        gate.set()
        assert wait_status(client, {"ready"})["status"] == "ready"

    app = create_app(Settings(bundle=tiny_bundle), backend_factory=backend_factory(error=OSError("disk")))
    with TestClient(app) as client:
        body = wait_status(client, {"failed"})
        assert body["status"] == "failed" and "disk" in body["reason"]
        assert_error(client.post("/embed", content=png_bytes(16, 16), headers=PNG), 503, "not_ready")
        assert client.get("/info").json()["status"] == "failed"


class FailingHead:
    """A real backend whose CLIP head fails while `fail` is set (a failing inference call)."""

    def __init__(self, inner) -> None:
        self.inner, self.info, self.fail = inner, inner.info, True

    def clip_head(self, tokens):
        if self.fail and tokens.shape[0] == 1 and getattr(self, "warm", False):
            raise RuntimeError("kaboom in the CLIP head")
        self.warm = True
        return self.inner.clip_head(tokens)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_failing_inference_fails_that_request_only(tiny_bundle: Path, caplog) -> None:
    holder: dict = {}

    def wrap(backend):
        holder["b"] = FailingHead(backend)
        return holder["b"]

    app = create_app(Settings(bundle=tiny_bundle), backend_factory=backend_factory(wrap))
    with TestClient(app) as client:
        wait_status(client, {"ready"})
        files = {"image": ("x.png", png_bytes(30, 20), "image/png")}
        with caplog.at_level("ERROR"):
            body = assert_error(client.post("/classify?labels=a", files=files), 500, "inference_failed")
        assert any(getattr(r, "request_id", None) == body["request_id"] for r in caplog.records)
        assert (
            client.post(
                "/segment/prompt", files=files, data={"prompts": '[{"box": [1, 1, 9, 9]}]'}
            ).status_code
            == 200
        )
        holder["b"].fail = False
        assert client.post("/classify?labels=a", files=files).status_code == 200


def test_unexpected_exception_is_a_logged_500_json_and_the_server_survives(tiny_bundle: Path, caplog) -> None:
    app = create_app(Settings(bundle=tiny_bundle))

    async def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/boom", boom, methods=["GET"])
    with TestClient(app) as client:
        wait_status(client, {"ready"})
        with caplog.at_level("ERROR"):
            body = assert_error(client.get("/boom"), 500, "internal_error")
        assert "kaboom" not in body["error"]
        assert any(getattr(r, "request_id", None) == body["request_id"] for r in caplog.records)
        assert client.post("/embed", content=png_bytes(16, 16), headers=PNG).status_code == 200


# --- real predictor on the real tiny bundle --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_client(tiny_bundle: Path) -> Iterator[TestClient]:
    with ready_client(Settings(bundle=tiny_bundle, max_prompts=4, max_points_per_prompt=4)) as client:
        yield client


def test_real_404_unknown_image_id(real_client: TestClient) -> None:
    assert_error(real_client.post("/embed", json={"image_id": "0" * 64}), 404, "not_found")
    unknown = {"image_id": "f" * 64, "prompts": [{"box": [1, 1, 5, 5]}]}
    assert_error(real_client.post("/segment/prompt", json=unknown), 404, "not_found")


def test_real_422_prompts(real_client: TestClient) -> None:
    files = {"image": ("x.png", png_bytes(40, 30), "image/png")}
    post = real_client.post
    assert_error(post("/segment/prompt", data={"prompts": "[{oops"}, files=files), 422, "invalid_input")
    assert_error(
        post("/segment/prompt", data={"prompts": '[{"points": [{"x": 5e6, "y": 1}]}]'}, files=files), 422
    )
    assert_error(
        post(
            "/segment/prompt", data={"prompts": '[{"points": [{"x": 1, "y": 1, "label": 2}]}]'}, files=files
        ),
        422,
    )
    too_many = json.dumps([{"box": [1, 1, 5, 5]}] * 5)
    assert_error(post("/segment/prompt", data={"prompts": too_many}, files=files), 422)
    points = json.dumps([{"points": [{"x": 1, "y": 1}] * 5}])
    assert_error(post("/segment/prompt", data={"prompts": points}, files=files), 422)
    assert_error(post("/segment/prompt", data={"prompts": "[]"}, files=files), 422)
    assert_error(post("/segment/prompt", data={"prompts": '[{"points": []}]'}, files=files), 422)
    assert_error(post("/segment/prompt", files=files), 422)  # no prompts at all
    outside = '[{"points": [{"x": 500, "y": -3}], "box": [30, 25, 1, 1]}]'  # allowed, as in SamPredictor
    assert post("/segment/prompt", data={"prompts": outside}, files=files).status_code == 200


def test_real_image_errors(real_client: TestClient) -> None:
    assert_error(real_client.post("/embed", content=b"\x00garbage" * 10, headers=PNG), 415)
    assert_error(real_client.post("/embed", content=png_bytes(1, 2000), headers=PNG), 422, "invalid_image")
    truncated = png_bytes(64, 64)[:200]
    assert_error(real_client.post("/embed", content=truncated, headers=PNG), 422, "invalid_image")


def test_real_503_on_corrupt_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    with open(broken / "encoder.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff" * 16)
    with TestClient(create_app(Settings(bundle=broken))) as client:
        body = wait_status(client, {"ready", "failed"})
        assert body["status"] == "failed" and "sha256" in body["reason"].lower(), body
        assert client.get("/readyz").status_code == 503
        assert_error(client.post("/embed", content=png_bytes(16, 16), headers=PNG), 503, "not_ready")
        assert client.get("/healthz").status_code == 200
    with TestClient(create_app(Settings(bundle=tmp_path / "missing"))) as client:
        assert wait_status(client, {"ready", "failed"})["status"] == "failed"


def _concurrent_embeds(client: TestClient, n: int) -> list:
    images = [png_bytes(24 + i, 24, seed=100 + i) for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(client.post, "/embed", content=img, headers=PNG) for img in images]
        return [f.result(timeout=60) for f in futures]


def test_real_429_queue_full_with_retry_after(tiny_bundle: Path) -> None:
    settings = Settings(bundle=tiny_bundle, queue_size=1, max_batch_size=1, max_batch_wait_ms=0, warmup=False)
    with TestClient(create_app(settings, backend_factory=slow_factory(0.5))) as client:
        assert wait_status(client, {"ready", "failed"})["status"] == "ready"
        responses = _concurrent_embeds(client, 6)
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes, codes
        assert all(c in (200, 429) for c in codes), codes
        for r in responses:
            if r.status_code == 429:
                assert_error(r, 429, "queue_full")
                assert int(r.headers["Retry-After"]) >= 1
        assert client.post("/embed", content=png_bytes(20, 20, seed=7), headers=PNG).status_code == 200


def test_real_504_expired_while_queued_never_runs(tiny_bundle: Path) -> None:
    settings = Settings(
        bundle=tiny_bundle,
        queue_size=16,
        max_batch_size=1,
        max_batch_wait_ms=0,
        request_timeout_s=0.4,
        warmup=False,
    )
    with TestClient(create_app(settings, backend_factory=slow_factory(0.6))) as client:
        assert wait_status(client, {"ready", "failed"})["status"] == "ready"
        metrics = client.app.state.service.metrics
        before = metrics.sample("samclip_encoder_runs_total")
        responses = _concurrent_embeds(client, 4)
        codes = [r.status_code for r in responses]
        assert 504 in codes, codes
        for r in responses:
            if r.status_code == 504:
                assert_error(r, 504, "deadline_exceeded")
        time.sleep(1.5)  # anything wrongly still queued would run by now
        ran = metrics.sample("samclip_encoder_runs_total") - before
        # one encoder thread, batch size 1: at most the single job already running when deadlines passed may have run
        # beyond the 200s; everything that expired while queued never ran.
        assert ran <= codes.count(200) + 1, (ran, codes)


def test_not_ready_body_mentions_reason_during_slow_load(tiny_bundle: Path) -> None:
    release = threading.Event()
    app = create_app(Settings(bundle=tiny_bundle), backend_factory=backend_factory(gate=release))
    with TestClient(app) as client:
        body = assert_error(
            client.post("/segment?text=a", content=png_bytes(16, 16), headers=PNG), 503, "not_ready"
        )
        assert "loading" in body["error"]
        release.set()
        assert wait_status(client, {"ready", "failed"})["status"] == "ready"


def test_too_many_new_labels_is_a_fast_422_and_others_are_served(tiny_bundle: Path) -> None:
    settings = Settings(bundle=tiny_bundle, max_new_texts=5, warmup=False)
    with TestClient(create_app(settings)) as client:
        assert wait_status(client, {"ready", "failed"})["status"] == "ready"
        image_id = client.post("/embed", content=png_bytes(30, 20), headers=PNG).json()["image_id"]
        labels = [f"unseen label {i}" for i in range(1000)]
        start = time.monotonic()
        body = assert_error(
            client.post("/classify", params={"labels": labels}, json={"image_id": image_id}), 422
        )
        assert body["error_type"] == "too_many_new_texts" and time.monotonic() - start < 5
        ok = client.post("/classify?labels=cat&labels=dog", json={"image_id": image_id})
        assert ok.status_code == 200 and len(ok.json()["labels"]) == 2
