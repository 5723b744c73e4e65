"""Internal records shared by the store, auth and metering (not OpenAI's wire types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.limit_spec import LimitSpec


class Api(StrEnum):
    """The OpenAI API a request called; also the ledger's ``api`` column."""

    chat = "chat.completions"
    completions = "completions"
    embeddings = "embeddings"
    responses = "responses"

    @property
    def path(self) -> str:
        return _PATHS[self]


_PATHS = {
    Api.chat: "/v1/chat/completions",
    Api.completions: "/v1/completions",
    Api.embeddings: "/v1/embeddings",
    Api.responses: "/v1/responses",
}


class Outcome(StrEnum):
    """How a metered request ended."""

    ok = "ok"
    error = "error"
    aborted = "aborted"  # the client went away before the response ended
    # The gateway died mid-request (found "started" in its journal at the next start).
    interrupted = "interrupted"
    # Not a request: tokens an engine counted for a request beyond what the gateway saw (a client
    # that left mid-generation), found by reconciliation; ``adjusts`` names the request.
    adjustment = "adjustment"


class TenantStatus(StrEnum):
    active = "active"
    suspended = "suspended"  # keys refused until reactivated; history kept
    deleted = "deleted"  # keys revoked; the name and the ledger rows are kept for billing


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: float
    status: TenantStatus = TenantStatus.active
    limits: LimitSpec | None = None  # None: the configured defaults apply


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A tenant key as stored: never the secret, only its hash and a display prefix."""

    id: str
    tenant_id: str
    tenant_name: str
    key_hash: str
    prefix: str
    created_at: float
    models: frozenset[str] | None = None  # None: every model
    expires_at: float | None = None
    revoked_at: float | None = None
    tenant_status: str = "active"
    limits: LimitSpec | None = None  # this key's own limits, on top of its tenant's
    tenant_limits: LimitSpec | None = None  # None: the configured defaults apply

    def usable_at(self, now: float) -> bool:
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        if self.expires_at is not None and self.expires_at <= now:
            return False
        return self.tenant_status == "active"

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(slots=True)
class UsageRecord:
    """One ledger row: exactly one per request."""

    request_id: str
    tenant_id: str
    key_id: str
    model: str
    api: str
    started_at: float
    endpoint: str = ""
    outcome: Outcome = Outcome.ok
    http_status: int = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ended_at: float = 0.0
    ttft_s: float | None = None
    error_code: str | None = None
    # Exact cost in picodollars (10^-12 of the currency unit): integers sum exactly in every
    # database; ``gateway.metering.pricing`` converts to and from ``Decimal``.
    cost_pico: int = 0
    price_version: str | None = None
    # Of ``prompt_tokens``, those the engine served from its prefix cache (priced apart).
    cached_tokens: int = 0
    # Choices asked for (OpenAI's ``n``): the engine processes the prompt once per choice.
    choices: int = 1
    service_tier: str | None = None  # as the request asked (None: the default tier)
    adjusts: str | None = None  # an adjustment row's request
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """One line of a usage report: the totals of the rows sharing ``group``."""

    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_pico: int
    cached_tokens: int = 0  # of ``prompt_tokens``


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """An engine's cumulative token counters (vLLM's ``vllm:*_total``, summed over its ranks).

    ``prompt_tokens`` counts the prompt once per choice and includes ``cached_tokens``.
    """

    prompt_tokens: int = 0
    generation_tokens: int = 0
    cached_tokens: int = 0
    prefix_hits: int = 0
    prefix_queries: int = 0

    def values(self) -> tuple[int, int, int, int, int]:
        return (
            self.prompt_tokens,
            self.generation_tokens,
            self.cached_tokens,
            self.prefix_hits,
            self.prefix_queries,
        )

    def minus(self, other: EngineCounters) -> EngineCounters:
        return EngineCounters(*(a - b for a, b in zip(self.values(), other.values(), strict=True)))

    def plus(self, other: EngineCounters) -> EngineCounters:
        return EngineCounters(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))

    def any_below(self, other: EngineCounters) -> bool:
        """True when some counter is lower than ``other``'s: an older reading, or a restart."""
        return any(a < b for a, b in zip(self.values(), other.values(), strict=True))


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One reading of an engine's counters, as a gateway replica took it.

    ``incarnation`` is the engine process's start time (0 when it exports none): a higher one is
    a restart. ``quiet``: no request was running or waiting, on this reading and on the one
    before it, with the same counters (so every request the engine counted has ended).
    """

    engine: str  # the endpoint URL, as the router and the ledger's ``endpoint`` spell it
    at: float  # epoch seconds when the reading was taken
    incarnation: float
    counters: EngineCounters
    quiet: bool
