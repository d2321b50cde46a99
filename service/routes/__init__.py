"""Thin routers, one per concern: health (healthz/readyz/info), embed, classify, segment, metrics."""
