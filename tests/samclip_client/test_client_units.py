"""Client parts without a server: image inputs and their ids, PNG writing, Retry-After, masks, requests."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samclip_client import ImageData, Mask, Retry, as_image
from samclip_client.calls import prompt, segment
from samclip_client.exchange import KnownImages, build_request
from samclip_client.images import png_bytes
from samclip_client.results import decode_logits, encode_logits
from samclip_client.retry import parse_retry_after

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 3), (5, 7, 4)])
def test_numpy_images_are_written_as_lossless_png(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(array))))
    assert decoded.shape == shape[:2] + ((shape[2],) if len(shape) == 3 and shape[2] != 1 else ())
    np.testing.assert_array_equal(decoded.reshape(array.shape), array)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 3))]
)
def test_unsupported_arrays_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        png_bytes(bad)


def test_every_input_kind_gives_the_sha256_of_the_uploaded_bytes(tmp_path: Path) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    pil = Image.fromarray(array)
    path = tmp_path / "x.png"
    pil.save(path)
    data = path.read_bytes()
    for given in (path, str(path), data, bytearray(data), memoryview(data), ImageData(data)):
        image = as_image(given)
        assert image.data == data and image.image_id == hashlib.sha256(data).hexdigest()
    from_pil, from_numpy = as_image(pil), as_image(array)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(from_pil.data))), array)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(from_numpy.data))), array)
    with pytest.raises(TypeError):
        as_image(3.5)
    with pytest.raises(ValueError):
        ImageData(b"")


def test_retry_after_parsing() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("-3") == 0.0
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(unreadable) is None


def test_retry_policy_bounds() -> None:
    policy = Retry(attempts=3, total_s=10, backoff_s=1, max_backoff_s=4, jitter_s=0)
    assert policy.delay(429, "2", attempt=1, elapsed_s=0) == 2.0
    assert policy.delay(503, "2", attempt=2, elapsed_s=5) == 2.0
    assert policy.delay(503, "2", attempt=3, elapsed_s=0) is None  # attempts spent
    assert policy.delay(429, "11", attempt=1, elapsed_s=0) is None  # past the time budget
    assert policy.delay(500, "1", attempt=1, elapsed_s=0) is None  # not a retry status
    assert 0 <= policy.delay(429, None, attempt=2, elapsed_s=0) <= 2.0  # back-off with full jitter
    jittered = Retry(total_s=10, backoff_s=1, jitter_s=0.5)
    assert all(3.0 <= jittered.delay(429, "3", 1, 0) <= 3.5 for _ in range(50))
    assert jittered.delay(429, "3", 1, elapsed_s=6.8) <= 3.2  # cut at the budget
    with pytest.raises(ValueError):
        Retry(attempts=0)


def test_masks_decode_from_coco_rle_and_logits_round_trip() -> None:
    truth = np.zeros((5, 8), bool)
    truth[1:4, 2:7] = True
    rle = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8)))
    payload = {"segmentation": {"size": [5, 8], "counts": rle["counts"].decode()}, "bbox": [2, 1, 5, 3],
               "area": 15, "score": 0.9, "label": "box", "stability_score": 0.97, "new_key": 1}  # fmt: skip
    mask = Mask.from_json(payload)
    np.testing.assert_array_equal(mask.mask, truth)
    assert mask.stability_score == 0.97 and mask.extra == {"new_key": 1} and mask.logits is None
    logits = np.linspace(-3, 3, 16 * 20, dtype=np.float32).reshape(16, 20)
    np.testing.assert_array_equal(decode_logits(encode_logits(logits)), logits)


def test_requests_are_built_as_the_service_documents() -> None:
    image = ImageData(b"abc")
    call = segment(["a dog", "a cat"])
    assert build_request(call, image, by_id=False) == {
        "method": "POST", "url": "/segment", "params": {"text": ["a dog", "a cat"], "format": "rle"},
        "headers": {"X-Image-Id": image.image_id, "Content-Type": "application/octet-stream"}, "content": b"abc",
    }  # fmt: skip
    logits = np.zeros((8, 8), np.float32)
    call = prompt([(1, 2, 0)], (0, 0, 4, 4), [(1, 1, 3, 3)], None, True, logits, True)
    by_id = build_request(call, image, by_id=True)
    assert by_id["params"] == {"return_logits": "true", "format": "rle"}
    body = by_id["json"]
    assert body["prompts"] == [{"points": [{"x": 1.0, "y": 2.0, "label": 0}], "box": [0.0, 0.0, 4.0, 4.0]}]
    assert body["boxes"] == [[1.0, 1.0, 3.0, 3.0]] and body["multimask"] is True
    np.testing.assert_array_equal(decode_logits(body["mask_input"]), logits)
    upload = build_request(call, image, by_id=False)
    assert json.loads(upload["data"]["prompts"]) == {k: v for k, v in body.items() if k != "image_id"}
    with pytest.raises(ValueError):
        prompt(None, None, None, None, False, None, False)
    with pytest.raises(ValueError):
        prompt([(1, 2, 3, 4)], None, None, None, False, None, False)


def test_known_images_is_a_bounded_lru() -> None:
    known = KnownImages(capacity=2)
    for key in ("a", "b", "a", "c"):
        known.add(key)
    assert "a" in known and "c" in known and "b" not in known
    known.discard("a")
    assert "a" not in known


def test_the_client_imports_no_server_dependency() -> None:
    heavy = [
        "service",
        "model_export",
        "training",
        "samclip_bundle",
        "fastapi",
        "torch",
        "PIL",
        "onnxruntime",
        "cv2",
    ]
    code = (
        "import sys, samclip_client, samclip_client.cli; "
        f"print([m for m in sys.modules if m.split('.')[0] in {heavy!r}])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
