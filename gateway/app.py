"""The app factory: nothing happens at import; the lifespan builds and tears down everything."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from fastapi import FastAPI

from gateway.admission.limits import Limiter, create_limiter
from gateway.admission.service import Admission
from gateway.admission.tokens import build_counters
from gateway.api import admin, openai, ops, usage
from gateway.api.docs import install_openapi
from gateway.api.errors import install_error_handlers
from gateway.billing.events import UsageEventFeed
from gateway.billing.outbox import RetryBackoff, WebhookOutbox
from gateway.billing.webhook import WebhookSender
from gateway.clock import Clock, monotonic
from gateway.config.limits import load_default_limits
from gateway.config.pools import DeploymentSpec, load_spec
from gateway.config.prices import load_prices
from gateway.limit_spec import LimitSpec
from gateway.metering.journal import Journal, open_journal, recovered_rows
from gateway.metering.meter import LedgerWriter, Meter
from gateway.metering.pricing import PriceBook
from gateway.metrics import GatewayMetrics
from gateway.reconcile.sampler import EngineSampler
from gateway.reconcile.settler import Settler
from gateway.records import Outcome
from gateway.routing.discovery import EndpointDiscovery
from gateway.routing.drains import Drains, create_drain_board
from gateway.routing.engine_stats import EngineStatsScraper
from gateway.routing.health import EjectionPolicy, HealthChecker
from gateway.routing.router import Router
from gateway.serving.proxy import ProxyService
from gateway.serving.tails import TailReader
from gateway.serving.upstream import AiohttpTransport, UpstreamClient, create_session
from gateway.settings import Settings
from gateway.state import GatewayState
from gateway.store import Store, create_store
from gateway.supervisor import Supervisor
from gateway.tenancy.auth import Authenticator

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConfigFiles:
    """The pool spec, prices and default limits, read and validated before the server starts."""

    spec: DeploymentSpec
    prices: PriceBook
    default_limits: LimitSpec | None

    @classmethod
    def load(cls, settings: Settings, spec: DeploymentSpec | None = None) -> ConfigFiles:
        """Raises ``ConfigError`` (file, key path, what was expected) for the first bad file."""
        pools = spec or load_spec(settings.config_path)
        return cls(pools, _prices(settings), load_default_limits(settings.limits_path))


def create_app(
    settings: Settings,
    spec: DeploymentSpec | None = None,
    store: Store | None = None,
    *,
    clock: Clock = monotonic,
) -> FastAPI:
    """Build the gateway app. ``spec`` and ``store`` default to what ``settings`` names; ``clock``
    is what routing, ejection and the supervisor tell time by (tests pass a fake one).

    Settings and every configuration file are checked here, so a bad one is refused before the
    server starts (the CLI prints one line), not from inside the lifespan with a traceback.
    """
    settings.check_startup()  # e.g. production without a real admin token: refuse now
    configs = ConfigFiles.load(settings, spec)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything opened is closed by the stack, in reverse: a start that fails halfway closes
        # exactly what it had opened (the journal's lock too, so a retry can take the directory).
        async with contextlib.AsyncExitStack() as stack:
            state = await _open_state(stack, settings, configs, store, clock)
            app.state.gateway = state
            await _start(stack, state)
            yield

    app = FastAPI(title="model gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(openai.router)
    app.include_router(ops.router)
    app.include_router(usage.router)
    # The admin API is documented in README; the public schema need not map it for everyone.
    app.include_router(admin.router, include_in_schema=settings.internals_public)
    install_error_handlers(app)
    install_openapi(app)
    return app


async def _open_state(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    configs: ConfigFiles,
    store: Store | None,
    clock: Clock,
) -> GatewayState:
    """Open every resource, each close pushed on ``stack`` as it is opened."""
    spec, prices, defaults = configs.spec, configs.prices, configs.default_limits
    counters = build_counters(spec, settings.data_dir)
    journal, leftovers, store = await _open_storage(stack, settings, store)
    session = create_session(settings.upstream_keepalive_s)
    stack.push_async_callback(session.close)
    metrics = GatewayMetrics()
    limiter = _limiter(settings, metrics)
    stack.push_async_callback(limiter.aclose)
    admission = Admission(limiter, counters, prices, defaults, metrics, settings.default_max_tokens)
    stack.push_async_callback(admission.wait_settled)  # settlements in flight, before the limiter closes
    router = Router.from_spec(spec, metrics, clock, settings.no_engine_wait_s)
    metrics.seed_models(router.pools)
    drains = Drains(
        create_drain_board(settings.redis_url, settings.redis_prefix), router, settings.drain_sync_interval_s
    )
    stack.push_async_callback(drains.close)
    ledger = LedgerWriter(
        store, journal, metrics, settings.ledger_flush_interval_s, settings.ledger_batch_size
    )
    stack.push_async_callback(ledger.close)  # the last rows, while the store and journal are open
    tails = TailReader(settings.abort_drain_s)
    stack.push_async_callback(tails.wait)  # cut streams' last tokens, before the ledger closes
    meter = Meter(ledger, journal, prices, metrics, known_models=set(router.pools))
    _recover(journal, meter, leftovers)
    health = _health_checker(settings, router, session, metrics, clock)
    transport = AiohttpTransport(session, settings.connect_timeout_s, settings.request_timeout_s)
    stack.push_async_callback(transport.aclose)
    engine_key = settings.engine_api_key.get_secret_value() if settings.engine_api_key else None
    upstream = UpstreamClient(transport, settings.first_token_timeout_s, engine_key)
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
        proxy=ProxyService(
            router, upstream, health, admission, meter, metrics, settings.max_body_bytes, tails
        ),
        journal=journal,
        prices=prices,
        meter=meter,
        admission=admission,
        drains=drains,
        supervisor=Supervisor(metrics, clock=clock),
    )


async def _open_storage(
    stack: contextlib.AsyncExitStack, settings: Settings, store: Store | None
) -> tuple[Journal, list[dict[str, object]], Store]:
    """The journal (and what the last process left in it), then the store. The store's close is
    pushed before its open: it is safe on one whose open failed partway, and frees the SQLite
    store's thread (``open_journal`` closes what it took itself when it fails)."""
    journal, leftovers = open_journal(settings.journal_path(), settings.workers, settings.journal_fsync)
    stack.callback(journal.close)
    store = store or create_store(settings.database_url)
    stack.push_async_callback(store.close)
    await store.open()
    return journal, leftovers, store


async def _start(stack: contextlib.AsyncExitStack, state: GatewayState) -> None:
    """Learn the engines' state before the first request, then start the background tasks."""
    settings = state.settings
    discovery = EndpointDiscovery.from_spec(
        state.spec, state.router, state.health, state.session, settings.discovery_interval_s
    )
    await discovery.refresh()  # discovered engines are known before the first health check
    await state.drains.sync()  # engines drained through other replicas stay drained here
    await state.health.check_all()  # no traffic to an engine before its first check
    await _seed_budgets(state)
    supervisor = state.supervisor
    supervisor.add("ledger", state.ledger.flush_when_due, 0.0, critical=True)  # paces itself
    supervisor.add(
        "health", state.health.check_round, state.health.interval_s, critical=True, wait_first=True
    )
    if discovery.enabled:
        supervisor.add("discovery", discovery.refresh, discovery.interval_s, wait_first=True)
    supervisor.add("drains", state.drains.sync, state.drains.interval_s, wait_first=True)
    sampler = EngineSampler(state.store, settings.reconcile_sample_interval_s)
    scraper = EngineStatsScraper(
        state.router,
        state.session,
        settings.engine_stats_interval_s,
        settings.health_timeout_s,
        listener=sampler.observe,
    )
    supervisor.add("engine-stats", scraper.scrape_all, scraper.interval_s)
    supervisor.add("reconcile-samples", sampler.flush, settings.engine_stats_interval_s)
    settler = Settler(state.store, state.meter.price, state.metrics, settings.reconcile_settle_s)
    supervisor.add("reconcile", settler.settle_round, settings.reconcile_settle_interval_s, wait_first=True)
    supervisor.add(
        "budgets", functools.partial(state.admission.publish_budgets, state.store), settings.budget_refresh_s
    )
    outbox = _usage_webhook(state)
    if outbox is not None:
        supervisor.add("usage-webhook", outbox.push_round, 0.0)  # paces itself
    await stack.enter_async_context(supervisor)  # stopped first, before what its tasks use closes


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


def _usage_webhook(state: GatewayState) -> WebhookOutbox | None:
    """The outbox pushing usage events to ``GATEWAY_USAGE_WEBHOOK_URL``, when one is set."""
    settings = state.settings
    if not settings.usage_webhook_url or settings.usage_webhook_secret is None:
        return None
    secret = settings.usage_webhook_secret.get_secret_value().encode()
    authorization = settings.usage_webhook_authorization
    sender = WebhookSender(
        state.session,
        settings.usage_webhook_url,
        secret,
        settings.usage_webhook_timeout_s,
        authorization=authorization.get_secret_value() if authorization is not None else None,
    )
    feed = UsageEventFeed(state.store.events, settings.usage_events_source, state.prices.currency)
    return WebhookOutbox(
        state.store.events,
        feed,
        sender,
        state.metrics,
        name=settings.usage_webhook_name,
        batch_size=settings.usage_webhook_batch_size,
        interval_s=settings.usage_webhook_interval_s,
        backoff=RetryBackoff(max_s=settings.usage_webhook_max_backoff_s),
    )


def _limiter(settings: Settings, metrics: GatewayMetrics) -> Limiter:
    return create_limiter(
        settings.redis_url,
        settings.limiter_fail_open,
        lease_ttl_s=settings.limiter_lease_ttl_s,
        prefix=settings.redis_prefix + "limits:",
        on_error=lambda operation: metrics.limiter_failures.labels(operation).inc(),
    )


def _health_checker(
    settings: Settings,
    router: Router,
    session: aiohttp.ClientSession,
    metrics: GatewayMetrics,
    clock: Clock,
) -> HealthChecker:
    ejection = EjectionPolicy(
        settings.eject_after_failures, settings.eject_cooldown_s, settings.eject_max_cooldown_s
    )
    return HealthChecker(
        router, session, metrics, settings.health_interval_s, settings.health_timeout_s, ejection, clock
    )


def _prices(settings: Settings) -> PriceBook:
    path = settings.prices_path
    if path is None:
        return PriceBook([])
    if not path.exists() and settings.environment == "development":
        logger.warning("no price table at %s: requests are metered but not priced", path)
        return PriceBook([])
    return PriceBook.from_table(load_prices(path))  # production refuses to start without its prices


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
