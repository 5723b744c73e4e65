"""Operational routes: liveness/readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.deps import StateDep
from gateway.api.docs import errors
from gateway.tenancy.auth import authorize_metrics

router = APIRouter()


_HEALTH_BODY: dict[str, Any] = {
    "application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}}
}
_UNHEALTHY: dict[int | str, dict[str, Any]] = {
    503: {"description": "A model without a healthy engine, or a critical task down", "content": _HEALTH_BODY}
}


@router.get("/health", responses=_UNHEALTHY)
async def health(state: StateDep, scope: Literal["engines", "gateway"] = "engines") -> Response:
    """200 while every model has at least one healthy engine, else 503 (with the details, where
    internals are public; else only the status).

    ``scope=gateway``, for a readiness probe: 200 while this process serves, whatever its engines
    do (taking every gateway pod out of its Service because one model's engines are down would
    stop all models); 503 while a critical background task (the ledger writer, the health checks)
    has crashed and not yet recovered, named in ``critical_tasks_down``. While the database refuses
    ledger writes the status is ``degraded: ledger spooling`` (still 200: the rows wait in the
    journal, and every replica shares the database, so leaving the Service would help nobody).
    """
    models = {
        name: {"healthy": sum(e.healthy for e in pool.endpoints), "total": len(pool.endpoints)}
        for name, pool in state.router.pools.items()
    }
    ready = all(m["healthy"] > 0 for m in models.values())
    status_code = 200 if ready else 503
    body: dict[str, object] = {"status": "ok" if ready else "degraded", "models": models}
    if scope == "gateway":
        down = state.supervisor.critical_down()
        status_code = 503 if down else 200
        body["critical_tasks_down"] = down
        ledger = state.ledger
        if ledger.spooling:  # the database refuses rows: they wait in the journal, nothing is lost
            backlog = {"rows": ledger.backlog_rows, "age_s": round(ledger.backlog_age_s(), 1)}
            body |= {"status": "degraded: ledger spooling", "ledger_backlog": backlog}
    if not state.settings.internals_public:  # production: up or down, not what is served or broken
        body = {"status": body["status"]}
    return JSONResponse(body, status_code=status_code)


@router.get("/metrics", response_class=PlainTextResponse, responses=errors(401, 403))
async def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus text; see ``authorize_metrics`` for who may read it."""
    settings = state.settings
    authorize_metrics(request.headers.get("authorization"), settings.metrics_token, settings.internals_public)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
