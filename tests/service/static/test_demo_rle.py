"""The demo page's COCO RLE decoder (service/static/rle.js), run in headless Chromium, against pycocotools on masks
that exercise every part of the compressed format: empty and full masks, a first run of 0 (foreground first),
single pixels, random noise (many short runs), and a 3000x4000 mask whose runs need 5-6 characters and negative
deltas. The decoded pixels (column-major, and row-major for the canvas) must equal pycocotools' decode."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np
import pytest
from demo_browser import DemoPage

from service.render import decode_rle, encode_rle

DECODE = """async ([rle, full]) => {
  const m = await import('/static/rle.js');
  const [h, w] = rle.size;
  const cols = m.decodeRle(rle);
  const rows = m.toRowMajor(cols, h, w);
  const hex = async (a) => Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', a)),
                                      (b) => b.toString(16).padStart(2, '0')).join('');
  const b64 = (a) => { let s = ''; for (let i = 0; i < a.length; i += 8192)
                         s += String.fromCharCode(...a.subarray(i, i + 8192)); return btoa(s); };
  return {counts: m.countsFromString(rle.counts), cols: await hex(cols), rows: await hex(rows),
          bits: full ? b64(cols) : null};
}"""


def masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    blobs = np.zeros((480, 640), bool)
    yy, xx = np.mgrid[:480, :640]
    for _ in range(12):
        cy, cx, r = rng.integers(0, 480), rng.integers(0, 640), rng.integers(5, 120)
        blobs ^= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    big = np.zeros((3000, 4000), bool)
    big[100:2900, 5:3990] = True
    big[1500:1501, :] = False
    big[:, 2000:2003] = False
    big[2999, 3999] = True
    first = np.zeros((9, 11), bool)
    first[0, 0] = first[4, 7] = first[8, 10] = True
    return {
        "empty": np.zeros((5, 7), bool),
        "full": np.ones((33, 17), bool),
        "one_pixel": np.ones((1, 1), bool),
        "foreground_first": first,
        "noise": rng.random((64, 48)) < 0.5,
        "blobs": blobs,
        "big": big,
    }


def runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts of a mask: column-major runs, starting with a (possibly empty) run of 0."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    lengths = np.diff(bounds).tolist()
    return ([0] if flat[0] else []) + lengths


def sha(bits: np.ndarray) -> str:
    return hashlib.sha256(bits.astype(np.uint8).tobytes()).hexdigest()


@pytest.mark.parametrize("name", list(masks()))
def test_js_decoder_equals_pycocotools(demo: DemoPage, name: str) -> None:
    rle = encode_rle(masks()[name])  # pycocotools' compressed counts
    reference = decode_rle(rle)  # pycocotools' decode
    got: dict[str, Any] = demo.page.evaluate(DECODE, [rle, reference.size <= 1_000_000])
    assert got["counts"] == runs(reference)
    assert got["cols"] == sha(reference.ravel(order="F")) and got["rows"] == sha(reference.ravel(order="C"))
    if got["bits"] is not None:
        bits = np.frombuffer(base64.b64decode(got["bits"]), np.uint8)
        assert np.array_equal(bits.reshape(reference.shape, order="F"), reference)


def test_js_decoder_rejects_malformed_rle(demo: DemoPage) -> None:
    check = """async (rle) => { const m = await import('/static/rle.js');
      try { m.decodeRle(rle); return 'decoded'; } catch (e) { return String(e.message); } }"""
    good = encode_rle(masks()["noise"])
    assert "do not fit" in demo.page.evaluate(check, {"size": [4, 4], "counts": good["counts"]})
    assert "covers" in demo.page.evaluate(check, {"size": [64, 49], "counts": good["counts"]})
    assert "truncated" in demo.page.evaluate(
        check, {"size": [2, 2], "counts": "R"}
    )  # continuation bit, no end
