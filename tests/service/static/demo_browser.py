"""Helpers of the demo-page tests: headless Debian Chromium driven by Playwright against a real server, what the
page sent (recorded from the browser's network events), the overlay's pixels, and the same requests replayed
with httpx so the page's drawing can be compared with the server's masks (decoded by pycocotools).

Masks are (H, W) bool in original-image pixels; the overlay is (ch, cw) bool, the canvas size (displayed size).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.render import decode_rle

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "demo-page-test-key"
IDLE = "body[data-busy='0']"
OVERLAY = "[data-testid=overlay]"

READ_OVERLAY = """() => {
  const c = document.querySelector('[data-testid=overlay]');
  const rgba = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const bits = new Uint8Array(c.width * c.height);
  for (let i = 0; i < bits.length; i += 1) bits[i] = rgba[4 * i + 3] > 0 ? 1 : 0;
  let s = '';
  for (let i = 0; i < bits.length; i += 8192) s += String.fromCharCode(...bits.subarray(i, i + 8192));
  const shown = document.querySelector('#image').getBoundingClientRect();
  return {width: c.width, height: c.height, bits: btoa(s), requestId: c.dataset.requestId || '',
          shown: [shown.width, shown.height]};
}"""


class Recorder:
    """Every request the page sends to the server, in order, and its response (matched by X-Request-ID)."""

    def __init__(self, page: Any) -> None:
        self.requests: list[Any] = []
        self.by_id: dict[str, Any] = {}
        page.on("request", lambda request: self.requests.append(request))
        page.on("response", self._response)

    def _response(self, response: Any) -> None:
        rid = response.headers.get("x-request-id")
        if rid:
            self.by_id[rid] = response.request

    def sent(self, path: str) -> list[Any]:
        """Requests to exactly `path` (query string ignored), in the order sent."""
        return [r for r in self.requests if httpx.URL(r.url).path == path]


@dataclass
class DemoPage:
    """A Playwright page on the demo, what it sent, the server's base URL, and problems seen in the browser."""

    page: Any
    rec: Recorder
    base: str
    problems: list[str] = field(default_factory=list)
    allow_http_errors: bool = False


def overlay_state(page: Any) -> tuple[np.ndarray, str]:
    """Wait until the page is idle; the overlay's non-transparent pixels (ch, cw) bool and the X-Request-ID(s)
    of the response(s) it shows."""
    page.wait_for_selector(IDLE, state="attached")
    got = page.evaluate(READ_OVERLAY)
    assert got["shown"] == [got["width"], got["height"]], "the overlay is the size of the displayed image"
    bits = np.frombuffer(base64.b64decode(got["bits"]), np.uint8).reshape(got["height"], got["width"])
    return bits.astype(bool), got["requestId"]


def shown_requests(page: Any, rec: Recorder, request_ids: str) -> list[Any]:
    """The browser requests whose responses the overlay shows (comma-separated X-Request-IDs)."""
    out = []
    for rid in request_ids.split(","):
        for _ in range(100):  # the response event may reach Python just after the page drew it
            if rid in rec.by_id:
                break
            page.wait_for_timeout(20)
        out.append(rec.by_id[rid])
    return out


def replay(base: str, request: Any) -> dict[str, Any]:
    """Send the browser's request again (same URL, body and content type) with httpx; the JSON response."""
    headers = {"X-API-Key": API_KEY, "Content-Type": request.headers["content-type"]}
    response = httpx.post(base + httpx.URL(request.url).raw_path.decode(), content=request.post_data_buffer,
                          headers=headers, timeout=120)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def response_masks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The mask dicts of any segmentation response, in the order the page lists them."""
    if "prompts" in body:
        return [m for p in body["prompts"] for m in p["masks"]]
    return body["masks"] if "masks" in body else [body["mask"]]


def union(masks: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Union of COCO-RLE masks -> (height, width) bool, original size."""
    out = np.zeros((height, width), bool)
    for m in masks:
        out |= decode_rle(m["segmentation"])
    return out


def scale_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool -> (height, width) bool, each target pixel taking the source pixel under its centre."""
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1).astype(int)
    return mask[rows][:, cols]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union_px = np.count_nonzero(a | b)
    return 1.0 if union_px == 0 else np.count_nonzero(a & b) / union_px


def json_body(request: Any) -> dict[str, Any]:
    assert request.headers["content-type"] == "application/json", request.headers
    return json.loads(request.post_data)
