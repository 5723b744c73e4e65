"""Every Prometheus metric the gateway exports, on a registry owned by the app.

Label values are bounded: tenants and models are configured names (an unconfigured model is
reported as ``unknown``), statuses are HTTP codes (``499`` when the client went away).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNKNOWN = "unknown"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    """The gateway's metrics; built once per app so tests get a clean registry each."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
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
        )
        self.time_to_first_token = self._histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request received to first token sent.",
            "tenant",
            "model",
        )
        self.inflight = self._gauge(
            "gateway_inflight_requests", "Requests being served now, by model.", "model"
        )

    def _add_engines_metrics(self) -> None:
        """What the gateway sees of its engines."""
        self.engine_up = self._gauge(
            "gateway_engine_up",
            "1 when the engine endpoint passes health checks, else 0.",
            "model",
            "endpoint",
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
        )
        self.ledger_failures = self._counter(
            "gateway_ledger_write_failures", "Ledger batch writes that failed and were retried."
        )
        self.ledger_backlog = self._gauge(
            "gateway_ledger_backlog_rows", "Usage rows journaled and waiting to be written to the database."
        )
        self.ledger_backlog_age = self._gauge(
            "gateway_ledger_backlog_age_seconds",
            "How long the oldest usage row waiting for the database has waited (0: none waits).",
        )

    def _add_queues_metrics(self) -> None:
        """Saturated pools' fair queues."""
        self.queue_depth = self._gauge(
            "gateway_queue_depth", "Requests waiting for a saturated pool's engines, by model.", "model"
        )
        self.queue_wait = self._histogram(
            "gateway_queue_wait_seconds",
            "Time a request waited in a pool's fair queue before an engine.",
            "model",
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
        )

    def _add_metering_metrics(self) -> None:
        """The ledger held against the engines' own counters (gateway/reconcile)."""
        self.metering_drift = self._gauge(
            "gateway_metering_drift_tokens",
            "Tokens an engine counted that neither the ledger nor an adjustment accounts for (negative: "
            "the ledger holds more), over the periods settled in the last hour, by engine.",
            "engine",
        )
        self.metering_adjusted = self._counter(
            "gateway_metering_adjusted_tokens",
            "Tokens billed by adjustment rows this process wrote, by kind (prompt, completion).",
            "kind",
        )

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def _histogram(self, name: str, documentation: str, *labels: str) -> Histogram:
        return Histogram(name, documentation, labels, buckets=_LATENCY_BUCKETS, registry=self.registry)

    def observe_request(
        self,
        tenant: str,
        model: str,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        duration_s: float,
        ttft_s: float | None,
        cached_tokens: int = 0,
    ) -> None:
        """One finished request; ``cached_tokens`` are those of ``prompt_tokens`` served from cache."""
        self.requests.labels(tenant, model, str(status)).inc()
        if prompt_tokens:
            self.tokens.labels(tenant, model, "prompt").inc(prompt_tokens)
        if cached_tokens:
            self.tokens.labels(tenant, model, "cached_prompt").inc(cached_tokens)
        if completion_tokens:
            self.tokens.labels(tenant, model, "completion").inc(completion_tokens)
        self.request_duration.labels(tenant, model).observe(duration_s)
        if ttft_s is not None:
            self.time_to_first_token.labels(tenant, model).observe(ttft_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
