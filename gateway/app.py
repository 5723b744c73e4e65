"""The app factory: nothing happens at import; the lifespan builds and tears down everything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.admission.limit_config import load_default_limits
from gateway.admission.limits import create_limiter
from gateway.admission.service import Admission
from gateway.admission.tokens import build_counters
from gateway.api import admin, openai, ops, usage
from gateway.config.pools import DeploymentSpec, load_spec
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    RouteNotFoundError,
)
from gateway.metering.journal import Journal, recovered_rows
from gateway.metering.meter import LedgerWriter, Meter
from gateway.metering.pricing import PriceBook, load_prices
from gateway.metrics import GatewayMetrics
from gateway.records import Outcome
from gateway.routing.discovery import EndpointDiscovery
from gateway.routing.drains import Drains, create_drain_board
from gateway.routing.engine_stats import EngineStatsScraper
from gateway.routing.health import EjectionPolicy, HealthChecker
from gateway.routing.router import Router
from gateway.serving.proxy import ProxyService
from gateway.serving.upstream import AiohttpTransport, UpstreamClient, create_session
from gateway.settings import Settings
from gateway.state import GatewayState
from gateway.store import Store, create_store
from gateway.tenancy.auth import Authenticator

logger = logging.getLogger(__name__)


def create_app(settings: Settings, spec: DeploymentSpec | None = None, store: Store | None = None) -> FastAPI:
    """Build the gateway app. ``spec`` and ``store`` default to what ``settings`` names."""
    settings.check_startup()  # e.g. production without a real admin token: refuse now

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await _build_state(settings, spec or load_spec(settings.config_path), store)
        app.state.gateway = state
        discovery = EndpointDiscovery.from_spec(
            state.spec, state.router, state.health, state.session, settings.discovery_interval_s
        )
        await discovery.refresh()  # discovered engines are known before the first health check
        await state.drains.sync()  # engines drained through other replicas stay drained here
        await state.health.check_all()  # no traffic to an engine before its first check
        await _seed_budgets(state)
        tasks = [
            asyncio.create_task(state.health.run(), name="health"),
            asyncio.create_task(state.ledger.run(), name="ledger"),
            asyncio.create_task(discovery.run(), name="discovery"),
            asyncio.create_task(state.drains.run(), name="drains"),
            asyncio.create_task(
                EngineStatsScraper(
                    state.router, state.session, settings.engine_stats_interval_s, settings.health_timeout_s
                ).run(),
                name="engine-stats",
            ),
            asyncio.create_task(
                state.admission.publish_budgets(state.store, settings.budget_refresh_s), name="budgets"
            ),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.admission.wait_settled()
            await state.admission.close()
            await state.ledger.close()
            await state.session.close()
            await state.drains.close()
            await state.store.close()
            state.journal.close()

    app = FastAPI(title="model gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(openai.router)
    app.include_router(ops.router)
    app.include_router(usage.router)
    app.include_router(admin.router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _build_state(settings: Settings, spec: DeploymentSpec, store: Store | None) -> GatewayState:
    prices = _prices(settings)
    journal = Journal(settings.journal_path(), fsync=settings.journal_fsync)
    leftovers = journal.open()
    store = store or create_store(settings.database_url)
    await store.open()
    metrics = GatewayMetrics()
    session = create_session()
    router = Router.from_spec(spec, metrics)
    ejection = EjectionPolicy(
        settings.eject_after_failures, settings.eject_cooldown_s, settings.eject_max_cooldown_s
    )
    health = HealthChecker(
        router, session, metrics, settings.health_interval_s, settings.health_timeout_s, ejection
    )
    ledger = LedgerWriter(
        store, journal, metrics, settings.ledger_flush_interval_s, settings.ledger_batch_size
    )
    meter = Meter(ledger, journal, prices, metrics, known_models=set(router.pools))
    admission = _admission(settings, spec, prices, metrics)
    _recover(journal, meter, leftovers)
    transport = AiohttpTransport(session, settings.connect_timeout_s, settings.request_timeout_s)
    upstream = UpstreamClient(transport, settings.first_token_timeout_s)
    proxy = ProxyService(router, upstream, health, admission, meter, metrics, settings.max_body_bytes)
    board = create_drain_board(settings.redis_url, settings.redis_prefix)
    return GatewayState(
        settings=settings,
        spec=spec,
        store=store,
        metrics=metrics,
        session=session,
        router=router,
        health=health,
        authenticator=Authenticator(store, settings.auth_cache_ttl_s),
        ledger=ledger,
        proxy=proxy,
        journal=journal,
        prices=prices,
        meter=meter,
        admission=admission,
        drains=Drains(board, router, settings.drain_sync_interval_s),
    )


async def _seed_budgets(state: GatewayState) -> None:
    """Monthly budgets start from what the ledger already holds (after the recovered rows)."""
    await state.ledger.flush()
    try:
        seeded = await state.admission.seed_months(state.store, time.time())
    except Exception:  # noqa: BLE001 - the limiter or store is down: budgets start from what they hold
        logger.warning("could not seed this month's budgets from the ledger", exc_info=True)
        return
    if seeded:
        logger.info("seeded this month's budget counters of %d tenants/keys from the ledger", seeded)


def _admission(
    settings: Settings, spec: DeploymentSpec, prices: PriceBook, metrics: GatewayMetrics
) -> Admission:
    limiter = create_limiter(
        settings.redis_url,
        settings.limiter_fail_open,
        lease_ttl_s=settings.limiter_lease_ttl_s,
        prefix=settings.redis_prefix + "limits:",
        on_error=lambda operation: metrics.limiter_failures.labels(operation).inc(),
    )
    counters = build_counters(spec, settings.data_dir)
    defaults = load_default_limits(settings.limits_path)
    return Admission(limiter, counters, prices, defaults, metrics, settings.default_max_tokens)


def _prices(settings: Settings) -> PriceBook:
    path = settings.prices_path
    if path is not None and not path.exists() and settings.environment == "development":
        logger.warning("no price table at %s: requests are metered but not priced", path)
        return PriceBook([])
    return load_prices(path)  # production refuses to start without its prices


def _recover(journal: Journal, meter: Meter, leftovers: list[dict[str, object]]) -> None:
    """Queue what the previous process left: unsaved rows, and requests it was killed during."""
    rows = recovered_rows(leftovers, now=time.time())
    for row in rows:
        if row.price_version is None:
            meter.price(row)
        meter.record(row)  # journaled again in this process's segment, then queued for the ledger
    journal.forget_leftovers()
    if rows:
        interrupted = sum(1 for r in rows if r.outcome == Outcome.interrupted)
        logger.warning("recovered %d ledger rows from the journal (%d interrupted)", len(rows), interrupted)


def error_response(error: GatewayError) -> Response:
    return Response(
        error.to_json(),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"][1:]) or None
    return error_response(InvalidRequestError(str(first["msg"]), param=param))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(MethodNotAllowedError(f"Method {request.method} is not allowed here."))
    if exc.status_code == 404:
        return error_response(RouteNotFoundError(f"Unknown path: {request.url.path}"))
    error = GatewayError(str(exc.detail))
    error.status_code = exc.status_code
    return error_response(error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(GatewayError("The server had an error while processing your request."))
