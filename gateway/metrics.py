"""Every Prometheus metric the gateway exports, on a registry owned by the app.

Label values are bounded: tenants and models are configured names (an unconfigured model is
reported as ``unknown``), statuses are HTTP codes (``499`` when the client went away).

Several worker processes (``gateway serve --workers``) use prometheus_client's multiprocess mode:
``PROMETHEUS_MULTIPROC_DIR`` is set before a worker imports prometheus_client, every value then
lives in a file there, and any worker's ``/metrics`` adds up all of them. Counters and histograms
add up; each gauge says how its workers' values combine (``_gauge``'s ``across``), counting only
live workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

UNKNOWN = "unknown"
# prometheus_client reads it once, at import: set, every metric value is kept in a file there.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# How a gauge's values in several workers make one: the sum, the largest, the smallest, the last
# set (of the workers alive now).
Across = Literal["livesum", "livemax", "livemin", "livemostrecent"]

# Bucket edges for LLM latencies. A first token comes in tens of milliseconds to a minute (a long
# prompt on a busy engine); a whole request takes up to GATEWAY_REQUEST_TIMEOUT_S (10 minutes);
# an output token every few milliseconds to a second; a queue wait up to a pool's max_wait_s.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    """The gateway's metrics; built once per app so tests get a clean registry each."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No ``*_created`` series: they double every counter and histogram for a timestamp that
        # Prometheus does not need (process-wide in prometheus_client; the gateway wants none).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._exposed = self.registry  # what /metrics shows: this process's, or every worker's
        shared = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
        if shared:
            self._exposed = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self._exposed, shared)  # type: ignore[no-untyped-call]
        self._add_requests_metrics()
        self._add_engines_metrics()
        self._add_limits_metrics()
        self._add_queues_metrics()
        self._add_usage_events_metrics()
        self._add_metering_metrics()

    def _add_requests_metrics(self) -> None:
        """Traffic, tokens and latency per tenant and model."""
        self.requests = self._counter(
            "gateway_requests",
            "Requests answered, by tenant, model and HTTP status.",
            "tenant",
            "model",
            "status",
        )
        self.tokens = self._counter(
            "gateway_tokens",
            "Tokens metered, by tenant, model and kind: prompt, completion, or cached_prompt "
            "(the prompt tokens served from the engine's prefix cache, also counted in prompt).",
            "tenant",
            "model",
            "kind",
        )
        self.request_duration = self._histogram(
            "gateway_request_duration_seconds",
            "Time from request received to response ended.",
            "tenant",
            "model",
            buckets=DURATION_BUCKETS,
        )
        self.time_to_first_token = self._histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request received to first token sent, for streamed requests.",
            "tenant",
            "model",
            buckets=TTFT_BUCKETS,
        )
        self.time_per_output_token = self._histogram(
            "gateway_time_per_output_token_seconds",
            "Mean time between output tokens after the first, per streamed request (inter-token latency).",
            "tenant",
            "model",
            buckets=TOKEN_BUCKETS,
        )
        self.cost = self._counter(
            "gateway_cost",
            "Cost metered, in the price table's currency, by tenant and model (the ledger is exact).",
            "tenant",
            "model",
        )
        self.inflight = self._gauge(
            "gateway_inflight_requests", "Requests being served now, by model.", "model", across="livesum"
        )

    def _add_engines_metrics(self) -> None:
        """What the gateway sees of its engines."""
        self.engine_up = self._gauge(
            "gateway_engine_up",
            "1 when the engine endpoint passes health checks, else 0.",
            "model",
            "endpoint",
            across="livemin",
        )
        self.engine_ejections = self._counter(
            "gateway_engine_ejections",
            "Engines taken out of rotation after failed requests in a row.",
            "model",
        )

    def _add_limits_metrics(self) -> None:
        """Refusals: keys, limits, budgets; and the ledger's write failures."""
        self.auth_failures = self._counter(
            "gateway_auth_failures", "Requests refused for a missing, wrong, revoked or expired key."
        )
        self.ratelimited = self._counter(
            "gateway_ratelimited",
            "Requests refused by a limit, by tenant and reason "
            "(requests, tokens, concurrency, monthly_tokens, monthly_cost).",
            "tenant",
            "reason",
        )
        self.limiter_failures = self._counter(
            "gateway_limiter_failures", "Shared limiter (Redis) calls that failed, by operation.", "operation"
        )
        self.budget_remaining = self._gauge(
            "gateway_budget_remaining",
            "What is left of each tenant's monthly budget, by kind "
            "(tokens, or cost in the price table's currency).",
            "tenant",
            "kind",
            across="livemostrecent",
        )
        self.ledger_failures = self._counter(
            "gateway_ledger_write_failures", "Ledger batch writes that failed and were retried."
        )
        self.ledger_backlog = self._gauge(
            "gateway_ledger_backlog_rows",
            "Usage rows journaled and waiting to be written to the database.",
            across="livesum",
        )
        self.ledger_backlog_age = self._gauge(
            "gateway_ledger_backlog_age_seconds",
            "How long the oldest usage row waiting for the database has waited (0: none waits).",
            across="livemax",
        )

    def _add_queues_metrics(self) -> None:
        """Saturated pools' fair queues."""
        self.queue_depth = self._gauge(
            "gateway_queue_depth",
            "Requests waiting for a saturated pool's engines, by model.",
            "model",
            across="livesum",
        )
        self.queue_wait = self._histogram(
            "gateway_queue_wait_seconds",
            "Time a request waited in a pool's fair queue before an engine.",
            "model",
            buckets=WAIT_BUCKETS,
        )
        self.queue_rejected = self._counter(
            "gateway_queue_rejected",
            "Requests refused by a pool's queue, by model and reason (tenant_full, full, timeout; "
            "no_engine: held while no engine was up, and none came back in time).",
            "model",
            "reason",
        )
        self.background_task_restarts = Counter(
            "gateway_background_task_restarts",
            "Background tasks that crashed and were restarted by the supervisor, by task "
            "(ledger, health, engine-stats, discovery, drains, budgets, usage-webhook, reconcile-samples, "
            "reconcile).",
            ["task"],
            registry=self.registry,
        )

    def _add_usage_events_metrics(self) -> None:
        """The usage webhook outbox (on the replica that pushes)."""
        self.usage_events_sent = self._counter(
            "gateway_usage_events_sent", "Usage events the billing webhook acknowledged (2xx)."
        )
        self.usage_webhook_failures = self._counter(
            "gateway_usage_webhook_failures",
            "Usage event batches the billing webhook did not acknowledge, by reason "
            "(status: a non-2xx answer, connection, timeout).",
            "reason",
        )
        self.usage_events_lag = self._gauge(
            "gateway_usage_events_lag_seconds",
            "Age of the oldest usage event the billing webhook has not acknowledged (0: caught up).",
            across="livemax",
        )

    def _add_metering_metrics(self) -> None:
        """The ledger held against the engines' own counters (gateway/reconcile)."""
        self.metering_drift = self._gauge(
            "gateway_metering_drift_tokens",
            "Tokens an engine counted that neither the ledger nor an adjustment accounts for (negative: "
            "the ledger holds more), over the periods settled in the last hour, by engine.",
            "engine",
            across="livemostrecent",
        )
        self.metering_adjusted = self._counter(
            "gateway_metering_adjusted_tokens",
            "Tokens billed by adjustment rows this process wrote, by kind (prompt, completion).",
            "kind",
        )

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labels: str, across: Across) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry, multiprocess_mode=across)

    def _histogram(
        self, name: str, documentation: str, *labels: str, buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def seed_models(self, models: Iterable[str]) -> None:
        """Series per configured model exist from the start, at 0 (a dashboard's query finds them)."""
        for model in models:
            self.inflight.labels(model)
            self.queue_depth.labels(model)
            self.engine_ejections.labels(model)

    def forget_engine(self, model: str, endpoint: str) -> None:
        """Drop a removed engine's ``gateway_engine_up`` series. Several workers' files cannot drop
        one: there it stays, at 0, until the gateway restarts."""
        if self._exposed is not self.registry:
            self.engine_up.labels(model, endpoint).set(0)
        else:
            self.engine_up.remove(model, endpoint)

    def observe_request(
        self,
        tenant: str,
        model: str,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        duration_s: float,
        ttft_s: float | None,
        streamed: bool = True,
        cost_pico: int = 0,
        cached_tokens: int = 0,
    ) -> None:
        """One finished request; ``cached_tokens`` are those of ``prompt_tokens`` served from cache.
        TTFT and inter-token latency only for a stream: a whole body's first byte is its last,
        which would read as a first token as slow as the request."""
        self.requests.labels(tenant, model, str(status)).inc()
        if cost_pico:
            self.cost.labels(tenant, model).inc(cost_pico / 10**12)
        if prompt_tokens:
            self.tokens.labels(tenant, model, "prompt").inc(prompt_tokens)
        if cached_tokens:
            self.tokens.labels(tenant, model, "cached_prompt").inc(cached_tokens)
        if completion_tokens:
            self.tokens.labels(tenant, model, "completion").inc(completion_tokens)
        self.request_duration.labels(tenant, model).observe(duration_s)
        if ttft_s is None or not streamed:
            return
        self.time_to_first_token.labels(tenant, model).observe(ttft_s)
        if completion_tokens > 1:
            per_token = max(duration_s - ttft_s, 0.0) / (completion_tokens - 1)
            self.time_per_output_token.labels(tenant, model).observe(per_token)

    def render(self) -> bytes:
        return generate_latest(self._exposed)


def reset_multiprocess_dir(directory: Path) -> None:
    """An empty ``directory`` for a new set of workers' files (values of an earlier run would add up)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink()


def forget_worker(pid: int, directory: Path) -> None:
    """A worker has exited: its gauges stop counting (its counters and histograms stay counted)."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
