"""When to retry: 429 (encoder queue full) and 503 (not ready / draining) answers, honouring Retry-After.

Bounded twice: at most `attempts` requests in all, and no retry whose Retry-After would end later than
`total_s` after the first request was sent (then the last answer is raised at once instead of sleeping in vain;
a jittered wait is cut at the budget).
The wait is Retry-After (delta-seconds "2", "0.5", or an HTTP-date; never less) plus a jitter that spreads
clients told the same Retry-After: uniform(0, jitter_s * min(max_backoff_s, backoff_s * 2 ** (attempt - 1)));
without Retry-After it is exponential back-off with full jitter: uniform(0, min(max_backoff_s,
backoff_s * 2 ** (attempt - 1))).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Retry:
    """Retry policy. attempts: most requests per call (1 = never retry); total_s: time budget of one call,
    from its first request; backoff_s / max_backoff_s: back-off when the answer has no Retry-After;
    jitter_s: share of that back-off added at random after a Retry-After (0 = wait exactly Retry-After)."""

    attempts: int = 6
    total_s: float = 120.0
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    jitter_s: float = 0.5
    statuses: frozenset[int] = RETRY_STATUSES

    def __post_init__(self) -> None:
        if self.attempts < 1 or min(self.total_s, self.backoff_s, self.max_backoff_s, self.jitter_s) < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, status: int, retry_after: str | None, attempt: int, elapsed_s: float) -> float | None:
        """Seconds to wait before request `attempt + 1` after answer number `attempt` (1-based) came back
        with `status` `elapsed_s` seconds into the call; None = do not retry."""
        if status not in self.statuses or attempt >= self.attempts:
            return None
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        told = parse_retry_after(retry_after)
        wait = (
            random.uniform(0, backoff) if told is None else told + random.uniform(0, self.jitter_s * backoff)
        )
        if elapsed_s + (told or 0.0) > self.total_s:
            return None
        return min(wait, self.total_s - elapsed_s)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After header -> seconds (>= 0), or None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds == float("inf"):  # NaN / inf
        return None
    return max(0.0, seconds)
