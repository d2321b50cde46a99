"""HTTP routes: thin routers over the engine. Inference routers are built per Settings (their request models
carry the settings' limits, so /openapi.json is exact); the probes, /info and /metrics are static."""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import classify, demo, embed, everything, health, metrics, prompt, refine, segment
from service.routes.requests import build_request_models
from service.settings import Settings


def build_routers(settings: Settings) -> list[APIRouter]:
    models = build_request_models(settings)
    return [
        health.router,
        embed.build(models),
        classify.build(models),
        segment.build(models),
        prompt.build(models),
        refine.build(models),
        everything.build(models),
        metrics.router,
        demo.router,
    ]
