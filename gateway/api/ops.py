"""Operational routes: liveness/readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.deps import StateDep

router = APIRouter()


@router.get("/health")
async def health(state: StateDep, scope: Literal["engines", "gateway"] = "engines") -> Response:
    """200 while every model has at least one healthy engine, else 503 (with the details).

    ``scope=gateway``: 200 whenever this process serves, for a readiness probe: taking every
    gateway pod out of its Service because one model's engines are down would stop all models.
    """
    models = {
        name: {"healthy": sum(e.healthy for e in pool.endpoints), "total": len(pool.endpoints)}
        for name, pool in state.router.pools.items()
    }
    ready = all(m["healthy"] > 0 for m in models.values())
    status_code = 200 if ready or scope == "gateway" else 503
    return JSONResponse({"status": "ok" if ready else "degraded", "models": models}, status_code=status_code)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
