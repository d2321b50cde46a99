"""The chart's Ingress routing, run in a real nginx: the rendered annotations (header, pattern, hash key, body
limit, timeouts) become the plain-nginx equivalent the chart README documents (a map choosing the hashed or the
balanced upstream, as ingress-nginx's canary-by-header does). Three real HTTP backends answer with their name.

Checks: every request carrying one X-Image-Id reaches one backend, image ids spread over the backends, requests
without the header (or with a malformed one) spread too, an upload above nginx's 1 MiB default passes and one above
config.max_body_bytes gets 413.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from loadtests.run import free_port  # noqa: E402
from tests.deploy.chart import HELM, named, render, sets  # noqa: E402

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
PREFIX = "nginx.ingress.kubernetes.io/"
BACKENDS = 3

pytestmark = [
    pytest.mark.skipif(HELM is None, reason="helm not installed (deploy/tools/install_ci_tools.sh)"),
    pytest.mark.skipif(
        NGINX is None, reason="nginx not installed (deploy/tools/install_ci_tools.sh --system)"
    ),
]


def start_backend(name: str) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            self.rfile.read(length)
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = reply  # noqa: N815 (http.server naming)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def nginx_conf(
    annotations: dict[str, str], canary: dict[str, str], ports: list[int], listen: int, tmp: Path
) -> str:
    """The chart's two Ingresses as one nginx server: a map picks the hashed upstream when the canary header
    matches its pattern, the balanced one otherwise."""
    header_var = "$http_" + canary[PREFIX + "canary-by-header"].lower().replace("-", "_")
    servers = "".join(f"server 127.0.0.1:{port}; " for port in ports)
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map {header_var} $samclip_pool {{ "~{canary[PREFIX + "canary-by-header-pattern"]}" by_image; default main; }}
    upstream main {{ {servers} }}
    upstream by_image {{ hash {canary[PREFIX + "upstream-hash-by"]} consistent; {servers} }}
    server {{
        listen 127.0.0.1:{listen};
        client_max_body_size {annotations[PREFIX + "proxy-body-size"]};
        proxy_read_timeout {annotations[PREFIX + "proxy-read-timeout"]}s;
        proxy_send_timeout {annotations[PREFIX + "proxy-send-timeout"]}s;
        location / {{ proxy_pass http://$samclip_pool; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    docs = render(None, *sets("ingress.enabled=true"))
    annotations = named(docs, "Ingress", "rel-samclip")["metadata"]["annotations"]
    canary = named(docs, "Ingress", "rel-samclip-by-image")["metadata"]["annotations"]
    backends = [start_backend(f"b{i}") for i in range(BACKENDS)]
    tmp = tmp_path_factory.mktemp("nginx")
    listen = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(annotations, canary, [port for _, port in backends], listen, tmp))
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{listen}"
    for _ in range(100):
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
    yield url
    proc.send_signal(signal.SIGQUIT)
    proc.wait(timeout=10)
    for server, _ in backends:
        server.shutdown()


def image_id(n: int) -> str:
    return sha256(f"image-{n}".encode()).hexdigest()


def test_one_image_one_backend_and_images_spread(proxy: str) -> None:
    owners = {}
    with httpx.Client(base_url=proxy, timeout=10) as client:
        for n in range(40):
            seen = {
                client.post("/segment/prompt", headers={"X-Image-Id": image_id(n)}).text for _ in range(3)
            }
            assert len(seen) == 1, f"image {n} reached {seen}"
            owners[n] = seen.pop()
    assert len(set(owners.values())) == BACKENDS, Counter(owners.values())


@pytest.mark.parametrize("header", [None, "", "not-a-sha256", image_id(1).upper()])
def test_requests_without_a_valid_header_spread(proxy: str, header: str | None) -> None:
    headers = {} if header is None else {"X-Image-Id": header}
    with httpx.Client(base_url=proxy, timeout=10) as client:
        hits = Counter(client.post("/embed", headers=headers).text for _ in range(30))
    assert set(hits) == {f"b{i}" for i in range(BACKENDS)}, hits


def test_body_limit_follows_max_body_bytes(proxy: str) -> None:
    with httpx.Client(base_url=proxy, timeout=30) as client:
        photo = client.post("/embed", content=b"\xff" * (3 * 1024 * 1024))  # > nginx's 1 MiB default
        assert photo.status_code == 200
        too_big = client.post("/embed", content=b"\xff" * (32 * 1024 * 1024 + 1))
        assert too_big.status_code == 413
