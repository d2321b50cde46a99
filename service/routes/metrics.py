"""GET /metrics: Prometheus text exposition of this app's registry (open, like the probes)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.routes.deps import StateDep

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}},
)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
