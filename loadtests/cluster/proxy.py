"""The harness's L7 proxy: a real nginx configured like the Helm chart's ingress-nginx Ingress
(deploy/helm/samclip/README.md, "Routing by content": the plain-nginx equivalent given there).

Routing (`routing`):
- "round_robin": every request to upstream `samclip`, nginx's default strict rotation over the replicas;
- "hash": like the chart's `ingress.routing.mode: imageId`: a request whose `X-Image-Id` header is a sha256 hex
  (`^[0-9a-f]{64}$`) goes to upstream `samclip_by_image`, consistently hashed (ketama) on that header; any other
  request (no or malformed header) goes to `samclip` and is round-robined over the same replicas, so requests
  without the header still spread instead of all hashing the empty string to one replica.

Limits like the chart's Ingress: `client_max_body_size` = the service's `max_body_bytes`, read/send timeouts =
`request_timeout_s` + 10 s (ingress.timeoutMarginSeconds: the service answers 504 itself first), connect timeout
5 s, request buffering on (the whole upload is buffered, so it can be resent to another replica).

Retries (`next_upstream`, default "error http_503 non_idempotent", at most 2 tries): every POST endpoint of
samclip-serve is a pure function of its request (the only side effect is filling a cache), so resending a
request to another replica is safe, and nginx's `non_idempotent` is enabled on purpose: a connection refused /
reset (a killed or vanished replica) or a 503 (a replica not ready or draining, which answers before doing any
work) is retried once on another replica. NOT retried: `timeout` (re-running a slow encode elsewhere doubles
the work exactly when the cluster is overloaded) and 429 (back-pressure must reach the client, which honours
Retry-After). ingress-nginx only honours `non_idempotent` with the controller ConfigMap option
`retry-non-idempotent: "true"`; with the controller default ("error timeout" without it) a kill -9 shows up
as 502s to clients instead: run the harness with --proxy-next-upstream "error timeout" to see that.

Errors made by nginx itself (502/503/504: no replica answered) are JSON like the service's
({"error", "error_type": "upstream_unavailable", "request_id"}) with `Retry-After: 1` and the header
`X-Samclip-Proxy-Error`, so clients and the harness can tell them from the service's own answers. Every answer
carries `X-Samclip-Upstream: $upstream_addr` (every replica tried, comma-separated).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from loadtests.cluster.procs import Processes, find_tool, wait_port
from loadtests.run import free_port

DEFAULT_NEXT_UPSTREAM = "error http_503 non_idempotent"
ROUTINGS = ("round_robin", "hash")

ERROR_LOCATION = """
        location @proxy_{code} {{
            default_type application/json;
            add_header Retry-After 1 always;
            add_header X-Samclip-Proxy-Error {code} always;
            add_header X-Samclip-Upstream $upstream_addr always;
            add_header X-Request-ID $request_id always;
            return {code} '{{"error": "no replica answered (upstream status: $upstream_status)", \
"error_type": "upstream_unavailable", "request_id": "$request_id"}}';
        }}"""

CONFIG = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    log_format samclip '$msec $status "$request" key=$http_x_image_id pool=$samclip_pool upstream=$upstream_addr '
                       'upstream_status=$upstream_status request_time=$request_time';
    access_log {dir}/access.log samclip;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    map $http_x_image_id $samclip_pool {{
        "~^[0-9a-f]{{64}}$" {hashed_pool};
        default samclip;
    }}

    upstream samclip {{
{servers}
        keepalive 32;
    }}

    upstream samclip_by_image {{
        hash $http_x_image_id consistent;
{servers}
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size {body_bytes};
        client_body_buffer_size 1m;
        proxy_request_buffering on;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Request-ID $request_id;
        proxy_connect_timeout 5s;
        proxy_send_timeout {timeout_s}s;
        proxy_read_timeout {timeout_s}s;
        proxy_next_upstream {next_upstream};
        proxy_next_upstream_tries 2;
        proxy_next_upstream_timeout {timeout_s}s;
        error_page 502 @proxy_502;
        error_page 503 @proxy_503;
        error_page 504 @proxy_504;

        location / {{
            add_header X-Samclip-Upstream $upstream_addr always;
            proxy_pass http://$samclip_pool;
        }}
{error_locations}
    }}
}}
"""


@dataclass(frozen=True)
class ProxyLimits:
    """Body size and timeouts of the service, from which the proxy's are derived (like the chart)."""

    max_body_bytes: int
    request_timeout_s: float

    @classmethod
    def from_service_settings(cls) -> ProxyLimits:
        from service.settings import Settings  # the service's defaults (and any SAMCLIP_* in the environment)

        settings = Settings()
        return cls(settings.max_body_bytes, settings.request_timeout_s)


def nginx_config(
    folder: Path,
    port: int,
    upstreams: list[str],
    routing: str,
    limits: ProxyLimits,
    next_upstream: str = DEFAULT_NEXT_UPSTREAM,
) -> str:
    """nginx.conf text for `upstreams` ("127.0.0.1:PORT") with `routing` in ROUTINGS."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    servers = "\n".join(f"        server {addr} max_fails=1 fail_timeout=5s;" for addr in upstreams)
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    return CONFIG.format(
        dir=folder,
        user=user,
        hashed_pool="samclip_by_image" if routing == "hash" else "samclip",
        servers=servers,
        port=port,
        body_bytes=limits.max_body_bytes,
        timeout_s=int(limits.request_timeout_s + 10),
        next_upstream=next_upstream,
        error_locations="".join(ERROR_LOCATION.format(code=code) for code in (502, 503, 504)),
    )


@dataclass
class Proxy:
    port: int
    proc: subprocess.Popen
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.folder / "access.log"


def start_nginx(
    procs: Processes,
    name: str,
    upstreams: list[str],
    routing: str,
    limits: ProxyLimits,
    next_upstream: str = DEFAULT_NEXT_UPSTREAM,
) -> Proxy:
    """nginx in the foreground (a child of the harness) on a free port with its own prefix folder."""
    binary = find_tool("nginx")
    if binary is None:
        raise RuntimeError("nginx is not installed (deploy/tools/install_ci_tools.sh --system)")
    folder = procs.workdir / f"nginx-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(nginx_config(folder, port, upstreams, routing, limits, next_upstream))
    cmd = [binary, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)]
    proc = procs.spawn(cmd, folder / "stdout.log")
    wait_port(port, proc, f"nginx ({conf})")
    return Proxy(port, proc, folder)
