"""Per-request recording for the runners (Locust event listeners, registered on import).

SAMCLIP_LT_RECORD=path   at test stop: {"POST /embed": {"200": [ms, ...], "429": [...]}, ...} (loadtests/run.py)
SAMCLIP_LT_EVENTS=path   at test stop: one JSON object per request, in order (loadtests/cluster):
    {"t": start (unix s), "name": "POST /embed", "status": 200, "ms": 12.3, "image_id": "..." | null,
     "by_id": bool, "upstream": "127.0.0.1:PORT[, ...]" | null (the proxy's X-Samclip-Upstream header: every
     replica it tried), "proxy": bool (the answer was made by the proxy: X-Samclip-Proxy-Error header),
     "retry_after": the Retry-After header or null, "user": id of the Locust user that sent it}
SAMCLIP_LT_FAILURES=path at test stop: Locust's failure table at that same moment, {"POST /segment/prompt:
    CatchResponseError('HTTP 404 unknown image_id')": occurrences, ...} (keys as in its failures CSV, which Locust
    writes at another moment: requests still finishing in the stop timeout may be in one and not the other)

Status 0 = no HTTP answer (connection error); status "dropped" = an open-loop arrival not sent because too many
were outstanding (loadtests/locustfile.py ConstantArrivalUser).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from locust import events
from locust.stats import StatsError

UPSTREAM_HEADER = "X-Samclip-Upstream"
PROXY_ERROR_HEADER = "X-Samclip-Proxy-Error"

_records: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
_events: list[dict[str, Any]] = []
_keep_events = bool(os.environ.get("SAMCLIP_LT_EVENTS"))


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, context=None, **kwargs):
    context = context or {}
    status: int | str = "dropped" if context.get("dropped") else getattr(response, "status_code", None) or 0
    _records[f"{request_type} {name}"][str(status)].append(float(response_time))
    if _keep_events:
        headers = getattr(response, "headers", None) or {}
        _events.append(
            {
                "t": kwargs.get("start_time"),
                "name": f"{request_type} {name}",
                "status": status,
                "ms": round(float(response_time), 2),
                "image_id": context.get("image_id"),
                "by_id": bool(context.get("by_id")),
                "upstream": headers.get(UPSTREAM_HEADER),
                "proxy": PROXY_ERROR_HEADER in headers,
                "retry_after": headers.get("Retry-After"),
                "user": context.get("user"),
            }
        )


@events.test_stop.add_listener
def _dump(environment, **_):
    path = os.environ.get("SAMCLIP_LT_RECORD")
    if path:
        Path(path).write_text(json.dumps({name: dict(by_status) for name, by_status in _records.items()}))
    path = os.environ.get("SAMCLIP_LT_EVENTS")
    if path:
        Path(path).write_text("".join(json.dumps(event) + "\n" for event in _events))
    path = os.environ.get("SAMCLIP_LT_FAILURES")
    if path:
        failures = {
            f"{e.method} {e.name}: {StatsError.parse_error(e.error)}": e.occurrences
            for e in environment.stats.errors.values()
        }
        Path(path).write_text(json.dumps(failures))
