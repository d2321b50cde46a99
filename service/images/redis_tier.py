"""The shared embedding tier in Redis (`SAMCLIP_REDIS_URL`): replicas behind one load balancer share encodings.

- Key: `samclip:emb:<bundle fingerprint>:<image_id>`, so replicas serving another bundle never read a stale
  entry; value: `service.images.entry.to_bytes` (an `.npz` whose arrays carry dtype and shape; never pickle);
  TTL `redis_ttl_s`; entries over `redis_max_entry_bytes` stay local.
- Every call is bounded: socket connect/read/write timeouts of `redis_timeout_s` and a total of
  `CALL_TIMEOUT_FACTOR` times that. Any failure (refused, timeout, malformed value) is a miss, counted in
  `samclip_redis_errors_total{op}`, and never reaches the client; after a failure the tier is skipped for a
  back-off (1 s doubling to 30 s), so a dead Redis costs one timeout per back-off, not one per request.
- (De)serialisation runs in a worker thread (entries are megabytes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis

from service.images.entry import ImageEntry, from_bytes, to_bytes

log = logging.getLogger(__name__)

CALL_TIMEOUT_FACTOR = 20.0
BACKOFF_S = (1.0, 30.0)


class RedisTier:
    """`EmbeddingTier` over Redis (see the module docstring)."""

    name = "redis"

    def __init__(self, settings: Any, metrics: Any, fingerprint: str) -> None:
        timeout = float(settings.redis_timeout_s)
        self._client = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
        )
        self._call_timeout = max(timeout * CALL_TIMEOUT_FACTOR, 0.5)
        self._ttl = int(settings.redis_ttl_s)
        self._max_bytes = int(settings.redis_max_entry_bytes)
        self._prefix = f"samclip:emb:{fingerprint}:"
        self._metrics = metrics
        self._down_until = 0.0
        self._backoff = BACKOFF_S[0]

    async def get(self, image_id: str) -> ImageEntry | None:
        data = await self._call("get", self._client.get(self._prefix + image_id))
        if not data:
            return None
        self._metrics.redis_bytes.labels(direction="read").inc(len(data))
        try:
            return await asyncio.to_thread(from_bytes, image_id, data)
        except ValueError as exc:
            self._metrics.redis_errors.labels(op="decode").inc()
            log.warning("ignoring a malformed shared-tier entry for %s: %s", image_id, exc)
            return None

    async def put(self, image_id: str, entry: ImageEntry) -> None:
        data = await asyncio.to_thread(to_bytes, entry)
        if len(data) > self._max_bytes:
            return
        if await self._call("set", self._client.set(self._prefix + image_id, data, ex=self._ttl)):
            self._metrics.redis_bytes.labels(direction="write").inc(len(data))

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, op: str, command: Any) -> Any:
        """Await one Redis command within the call timeout; None on any failure (see back-off above)."""
        if time.monotonic() < self._down_until:
            command.close()  # the coroutine was never awaited: discard it quietly
            return None
        try:
            result = await asyncio.wait_for(command, self._call_timeout)
        except Exception as exc:  # noqa: BLE001 - a shared-tier failure must never reach the client
            self._metrics.redis_errors.labels(op=op).inc()
            self._down_until = time.monotonic() + self._backoff
            log.warning("shared tier %s failed (%s: %s); skipping it for %.0f s", op, type(exc).__name__, exc,
                        self._backoff)  # fmt: skip
            self._backoff = min(self._backoff * 2, BACKOFF_S[1])
            return None
        self._backoff = BACKOFF_S[0]
        return result
