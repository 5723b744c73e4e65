"""Process settings (environment, ``GATEWAY_`` prefix). Pools live in the YAML spec."""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.config.loader import ConfigError, describe

MIN_ADMIN_TOKEN_CHARS = 32
MIN_WEBHOOK_SECRET_CHARS = 16
# What ``estimated_bits`` must find in a production admin token (a generated one scores 150-270).
MIN_ADMIN_TOKEN_BITS = 80
GENERATE_ADMIN_TOKEN = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
_PLACEHOLDER_WORDS = ("changeme", "replaceme", "placeholder", "example", "yourtoken", "xxxxxxxx")
ENV_PREFIX = "GATEWAY_"


class Settings(BaseSettings):
    """Everything one gateway process needs to start; read from ``GATEWAY_*`` variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    environment: Literal["development", "production"] = "development"
    # Several gateway replicas behind one address. The one switch that makes every piece of
    # shared state shared: start-up then refuses a SQLite ledger or a missing Redis, instead of
    # each replica quietly keeping its own tenants, keys, ledger or limits.
    replicated: bool = False
    # Worker processes of ``gateway serve`` (``--workers``), one port, one ledger (gateway/workers.py).
    # More than one needs GATEWAY_REDIS_URL; each worker journals in ``worker-<i>`` under the
    # journal directory, and /metrics adds up every worker's (files under ``metrics_dir``).
    workers: int = Field(default=1, ge=1, le=256)
    metrics_dir: Path | None = None  # default: data_dir/metrics/port-<port>
    config_path: Path = Path("configs/local.yaml")
    data_dir: Path = Path("data")
    # ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``. Unset: ``gateway.db`` in
    # ``data_dir`` (``sqlite:///data/gateway.db``), so one GATEWAY_DATA_DIR moves everything.
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"
    # Bearer token of the /admin API. Production refuses to start without a random one; in
    # development a missing token switches the admin API off.
    admin_token: SecretStr | None = None
    # Sent to every engine as ``Authorization: Bearer``; the engines are started with it as their
    # API key (``gateway up`` makes one per run; Kubernetes: the engine-api-key secret), so
    # nothing that reaches an engine's port bypasses the gateway's keys, limits and ledger.
    engine_api_key: SecretStr | None = None
    # Bearer token of /metrics; when set, /metrics takes only it.
    metrics_token: SecretStr | None = None
    # Whether what helps an attacker map the service is public: tenant names and engine addresses
    # in /metrics (unless metrics_token is set), per-model health in /health, the admin routes in
    # /openapi.json. None: public in development, hidden in production.
    expose_internals: bool | None = None
    # How long a rotated key keeps working next to its replacement (default one day).
    key_rotation_grace_s: float = Field(default=24 * 3600.0, ge=0, le=366 * 24 * 3600.0)

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Client connections (gateway/connections.py, docs/operations.md "Exposing the gateway"): a
    # request's headers must arrive within header_timeout_s of its first byte (or of the
    # connect), its body within body_timeout_s after them (408 otherwise); an idle keep-alive
    # connection closes after keep_alive_timeout_s. Past max_connections open connections a new
    # one gets 503 at once (lowered to fit the open-file limit). Headers over max_header_bytes
    # (request line included) or more than max_headers of them: 431.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    keep_alive_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=4096, ge=1)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=16)
    # Revoked or expired keys stop working within this bound (the key cache's lifetime).
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)
    health_interval_s: float = Field(default=2.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0)
    # Timeouts towards engines; each one that fires answers 504 (mid-stream: an SSE error event).
    # A connect timeout tries the next engine first; no first token is the engine's fault (it
    # counts towards ejection); a whole request is generous because generations can be long.
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_token_timeout_s: float = Field(default=120.0, gt=0)
    # After a client leaves a stream, how long the engine may take to stop and send what it had
    # made (metered: the engine counted it). Engines stop within milliseconds; this is a bound.
    abort_drain_s: float = Field(default=1.0, gt=0, le=30)
    request_timeout_s: float = Field(default=600.0, gt=0)
    # How long an idle pooled connection to an engine is kept: below the engine's own keep-alive
    # (uvicorn's, under vLLM: 5 s), so the gateway never sends on one the engine is closing.
    upstream_keepalive_s: float = Field(default=4.0, gt=0)
    # While every engine of a model is down but expected back (restarting, draining, ejected,
    # failing health checks), requests that have not started wait this long for one before a 503
    # with Retry-After (0: answer 503 at once).
    no_engine_wait_s: float = Field(default=30.0, ge=0)
    # Passive ejection (gateway/routing/health.py): failed requests in a row, first cool-down, longest.
    eject_after_failures: int = Field(default=5, ge=1)
    eject_cooldown_s: float = Field(default=10.0, gt=0)
    eject_max_cooldown_s: float = Field(default=120.0, gt=0)
    # On SIGTERM: stop accepting, let requests in flight finish for up to this long, then cut them.
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # Per-model prices with effective dates (configs/prices.yaml); unset: costs are not computed.
    prices_path: Path | None = Path("configs/prices.yaml")
    # The local usage journal (crash and outage safety). One directory per gateway process:
    # default ``data_dir/journal/port-<port>``.
    journal_dir: Path | None = None
    # fsync each journal line: survives power loss too, at the disk's sync latency per request.
    journal_fsync: bool = False
    # Limits: defaults for tenants without their own (configs/limits.yaml); a Redis URL shares
    # the limits between gateway replicas (else each process limits on its own).
    limits_path: Path | None = Path("configs/limits.yaml")
    redis_url: str | None = None
    # Every Redis key the gateway writes starts with this (several deployments may share a Redis).
    redis_prefix: str = "gw:"
    # Redis down: admit unchecked (open) or refuse with 503 (closed). Logged and counted either way.
    limiter_fail_open: bool = True
    # A request's concurrency slot lapses after this long even if its replica died holding it.
    limiter_lease_ttl_s: float = Field(default=900.0, gt=0)
    # Output tokens reserved for a request that sets no max_tokens.
    default_max_tokens: int = Field(default=1024, ge=1)
    budget_refresh_s: float = Field(default=15.0, gt=0)
    # How often each engine's /metrics (running, waiting, KV-cache use) is read for routing.
    engine_stats_interval_s: float = Field(default=1.0, gt=0)
    # Reconciliation with the engines' counters (gateway/reconcile): a reading is kept at each
    # quiet point, else at least this often while the counters move; a period between quiet
    # points is settled this long after its end (every replica's ledger rows are in by then), by
    # a round that runs this often.
    reconcile_sample_interval_s: float = Field(default=10.0, gt=0)
    reconcile_settle_s: float = Field(default=60.0, ge=0)
    reconcile_settle_interval_s: float = Field(default=10.0, gt=0)
    # Rows are durable in the journal first, so the database can take them in larger batches:
    # 50 ms flushes were the main source of the c=1 latency tail (benchmarks/RESULTS.md).
    ledger_flush_interval_s: float = Field(default=0.25, gt=0)
    ledger_batch_size: int = Field(default=500, ge=1)
    # Engine discovery (pools with ``discovery``, gateway/routing/discovery.py): how often each pool's
    # Service or DNS name is looked up again.
    discovery_interval_s: float = Field(default=5.0, gt=0)
    # With Redis, engines drained through any replica's admin API are drained on every replica
    # within this bound (gateway/routing/drains.py).
    drain_sync_interval_s: float = Field(default=2.0, gt=0)

    # Usage events (README, "Usage events"): the CloudEvents ``source`` of every event, and an
    # optional webhook the outbox pushes them to in signed batches (``usage_webhook_secret`` keys
    # the HMAC-SHA256 signature). ``usage_webhook_name`` names the outbox's cursor: a new name
    # starts from the beginning of the ledger.
    usage_events_source: str = Field(default="model-gateway", min_length=1)
    usage_webhook_url: str | None = None
    usage_webhook_secret: SecretStr | None = None
    # Sent as the ``Authorization`` header when set (``Bearer om_…``: OpenMeter's ingest API takes
    # the batches as they are).
    usage_webhook_authorization: SecretStr | None = None
    usage_webhook_name: str = Field(default="webhook", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    usage_webhook_batch_size: int = Field(default=100, ge=1, le=1000)
    # Idle poll interval once caught up; failed batches back off from 1 s doubling to the cap.
    usage_webhook_interval_s: float = Field(default=1.0, gt=0)
    usage_webhook_timeout_s: float = Field(default=10.0, gt=0)
    usage_webhook_max_backoff_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _database_in_data_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'gateway.db'}"
        return self

    @property
    def internals_public(self) -> bool:
        """See ``expose_internals``."""
        return (
            self.expose_internals if self.expose_internals is not None else self.environment == "development"
        )

    def journal_path(self) -> Path:
        return self.journal_dir or self.data_dir / "journal" / f"port-{self.port}"

    def metrics_path(self) -> Path:
        return self.metrics_dir or self.data_dir / "metrics" / f"port-{self.port}"

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings from the environment and ``overrides``; a bad value is a ``ConfigError``
        naming the variable (``GATEWAY_PORT: Input should be a valid integer (got 'abc')``)."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe(exc, written_as=lambda name: ENV_PREFIX + name.upper())) from None

    def check_startup(self) -> None:
        """Refuse a replicated set-up or several workers whose state is not shared, an admin token
        shorter than 32 characters and, outside development, a missing or guessable one
        (``ConfigError``)."""
        if self.replicated:
            if not self.database_url.startswith(("postgresql://", "postgres://")):
                raise ConfigError(
                    "GATEWAY_REPLICATED needs GATEWAY_DATABASE_URL=postgresql://…: tenants, keys and "
                    "the ledger must be one for all replicas"
                )
            if not self.redis_url:
                raise ConfigError(
                    "GATEWAY_REPLICATED needs GATEWAY_REDIS_URL=redis://…: without it each replica "
                    "would enforce every limit on its own (N replicas, N times the limit)"
                )
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                f"{self.workers} workers (--workers, GATEWAY_WORKERS) need GATEWAY_REDIS_URL=redis://…: "
                "without it each worker process would enforce every limit on its own (N workers, N "
                "times each tenant's limit) and keep its own engine drains"
            )
        self._check_usage_webhook()
        token = self.admin_token.get_secret_value() if self.admin_token is not None else ""
        if self.environment == "development" and not token.strip():
            return  # no token switches the admin API off
        # Development takes any token of the length; production also wants it to look random.
        short = len(token) < MIN_ADMIN_TOKEN_CHARS
        problem = (
            admin_token_problem(self.admin_token) if self.environment != "development" or short else None
        )
        if problem is not None:
            raise ConfigError(
                f"GATEWAY_ADMIN_TOKEN {problem}; {self.environment} needs a random token of at least "
                f"{MIN_ADMIN_TOKEN_CHARS} characters, e.g. from {GENERATE_ADMIN_TOKEN}"
            )

    def _check_usage_webhook(self) -> None:
        if not self.usage_webhook_url:
            return
        if not self.usage_webhook_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"GATEWAY_USAGE_WEBHOOK_URL must be an http(s) URL (got {self.usage_webhook_url!r})"
            )
        secret = self.usage_webhook_secret.get_secret_value() if self.usage_webhook_secret else ""
        if len(secret) < MIN_WEBHOOK_SECRET_CHARS:
            raise ConfigError(
                "GATEWAY_USAGE_WEBHOOK_URL needs GATEWAY_USAGE_WEBHOOK_SECRET, a shared secret of at least "
                f"{MIN_WEBHOOK_SECRET_CHARS} characters that the receiver checks the signatures with"
            )


def admin_token_problem(token: SecretStr | None) -> str | None:
    """Why ``token`` is unfit to guard the admin API, or None when it looks random enough."""
    value = token.get_secret_value() if token is not None else ""
    if not value.strip():
        return "is not set"
    if len(value) < MIN_ADMIN_TOKEN_CHARS:
        return f"is shorter than {MIN_ADMIN_TOKEN_CHARS} characters"
    letters = re.sub(r"[^a-z0-9]", "", value.lower())
    if any(word in letters for word in _PLACEHOLDER_WORDS):
        return "looks like a placeholder"
    # "adminadmin…", "secretsecret…", "aaaa…": long, but nowhere near random.
    if len(set(value)) < 8:
        return "has too few distinct characters to be random"
    bits = estimated_bits(value)
    if bits < MIN_ADMIN_TOKEN_BITS:
        return (
            f"looks guessable (about {bits:.0f} bits of randomness, at least {MIN_ADMIN_TOKEN_BITS} needed)"
        )
    return None


def estimated_bits(value: str) -> float:
    """A rough, deliberately pessimistic count of a token's random bits: the characters that are
    neither a run (the same, next or previous character: ``aaa``, ``1234``, ``fedc``) nor a
    repeat (a three-character piece seen before: ``Password1Password1``), times the bits of a
    character drawn from the classes the token uses. A 32-character ``secrets.token_hex(16)``
    scored at least 82 in 200,000 draws; ``Password1`` x 4 scores 60, ``0123456789abcdef`` x 4 16.
    """
    classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits)
    alphabet = sum(len(chars) for chars in classes if any(c in chars for c in value))
    if any(not (c.isascii() and c.isalnum()) for c in value):
        alphabet += 32  # punctuation and the rest
    seen: set[str] = set()
    fresh = 0
    for i, char in enumerate(value):
        piece = value[max(0, i - 2) : i + 1]
        if (i == 0 or abs(ord(char) - ord(value[i - 1])) > 1) and piece not in seen:
            fresh += 1
        seen.add(piece)
    return fresh * math.log2(alphabet)
