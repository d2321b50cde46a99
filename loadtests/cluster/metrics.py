"""Scrape a replica's Prometheus `/metrics` and take differences between two scrapes.

A scrape is {(sample name, ((label, value), ...)): value}, e.g.
{("samclip_encoder_runs_total", ()): 12.0, ("samclip_requests_total", (("endpoint", "/embed"), ("status", "200"))): 9.0}.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout_s: float = 5.0) -> Scrape | None:
    """Samples of GET {url}/metrics, or None when the replica does not answer (killed)."""
    try:
        response = httpx.get(f"{url}/metrics", timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    samples: Scrape = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def delta(after: Scrape | None, before: Scrape | None) -> Scrape:
    """after - before for every sample of `after` (counters; a sample new in `after` counts from 0)."""
    if after is None:
        return {}
    before = before or {}
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def total(samples: Scrape, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and wanted <= set(sample_labels)
    )


def by_label(samples: Scrape, name: str, label: str) -> dict[str, float]:
    """{label value: summed samples} for the samples called `name` (e.g. status -> count)."""
    out: dict[str, float] = {}
    for (sample, sample_labels), value in samples.items():
        if sample == name:
            key = dict(sample_labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


def service_5xx(samples: Scrape) -> int:
    """5xx answers the service itself counted (samclip_requests_total{status=5..})."""
    counts = by_label(samples, "samclip_requests_total", "status")
    return int(sum(count for status, count in counts.items() if status.startswith("5")))


def lookups(samples: Scrape) -> dict[str, int]:
    """samclip_embedding_lookups_total as {"memory_hit": n, "memory_miss": n, "redis_hit": n, ...}
    (empty when the service has no tiered store metrics)."""
    out: dict[str, int] = {}
    for (sample, sample_labels), value in samples.items():
        if sample == "samclip_embedding_lookups_total":
            labels = dict(sample_labels)
            key = f"{labels.get('tier', '?')}_{labels.get('result', '?')}"
            out[key] = out.get(key, 0) + int(value)
    return dict(sorted(out.items()))
