"""A request IN FLIGHT on the replica about to be killed: the case the proxy's retry policy decides.

A replica killed between requests only refuses new connections, and nginx resends a request it could not send
to another replica even for a POST. A request the replica was already working on is different: nginx resends
it only with `proxy_next_upstream ... non_idempotent`; without it the client gets the proxy's 502.

The probe makes that case happen on purpose instead of by chance: it finds a 12 MP photo whose `X-Image-Id`
(its sha256) the proxy routes to the victim (asking with cheap GET /healthz requests carrying the header), sends
POST /segment/refine?text=<a text never seen before> with it (decode + the text tower: slow enough to be in
flight), and the fault kills the victim `lead_s` later.
"""

from __future__ import annotations

import itertools
import threading
import time

import httpx

from loadtests.images import image_id, photo, unique_jpeg

ROUTE_TRIES = 64


class InFlightProbe:
    def __init__(self, proxy_url: str, victim_addr: str) -> None:
        self.proxy_url = proxy_url
        self.victim_addr = victim_addr
        self.result: dict = {"sent_to_victim": False}
        self.thread: threading.Thread | None = None

    def _routed_to_victim(self, client: httpx.Client) -> bytes | None:
        base = photo(2, (4000, 3000))
        for n in itertools.islice(itertools.count(int(time.time() * 1000)), ROUTE_TRIES):
            data = unique_jpeg(base, n)
            answer = client.get(f"{self.proxy_url}/healthz", headers={"X-Image-Id": image_id(data)})
            if answer.headers.get("X-Samclip-Upstream", "").split(", ")[-1] == self.victim_addr:
                return data
        return None

    def _send(self, data: bytes) -> None:
        headers = {"Content-Type": "image/jpeg", "X-Image-Id": image_id(data)}
        url = f"{self.proxy_url}/segment/refine?text=probe{time.time_ns()}"
        try:
            response = httpx.post(url, content=data, headers=headers, timeout=120)
            upstream = [
                a.strip() for a in response.headers.get("X-Samclip-Upstream", "").split(",") if ":" in a
            ]
            self.result.update(
                status=response.status_code,
                upstream=upstream,
                proxy_made="X-Samclip-Proxy-Error" in response.headers,
            )
        except httpx.HTTPError as exc:
            self.result.update(status=0, error=repr(exc))
        self.result["finished_t"] = time.time()

    def start(self) -> bool:
        """Send the probe in a thread; False when no candidate image routes to the victim."""
        with httpx.Client(timeout=10) as client:
            data = self._routed_to_victim(client)
        if data is None:
            return False
        self.result["sent_to_victim"] = True
        self.thread = threading.Thread(target=self._send, args=(data,), daemon=True)
        self.thread.start()
        return True

    def finish(self, fault_t: float) -> dict:
        """Wait for the probe's answer: {"sent_to_victim", "status", "upstream", "proxy_made",
        "in_flight_at_kill" (answered after the kill), "retried" (another replica answered)}."""
        if self.thread is not None:
            self.thread.join(timeout=150)
        result = dict(self.result)
        if "finished_t" in result:
            result["in_flight_at_kill"] = result.pop("finished_t") >= fault_t
            result["retried"] = len(result.get("upstream", [])) > 1
        return result
