"""Process settings (environment, ``GATEWAY_`` prefix). Pools live in the YAML spec."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.config.loader import ConfigError, describe

MIN_ADMIN_TOKEN_CHARS = 32
MIN_WEBHOOK_SECRET_CHARS = 16
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
    # How long a rotated key keeps working next to its replacement (default one day).
    key_rotation_grace_s: float = Field(default=24 * 3600.0, ge=0)

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
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

    def journal_path(self) -> Path:
        return self.journal_dir or self.data_dir / "journal" / f"port-{self.port}"

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings from the environment and ``overrides``; a bad value is a ``ConfigError``
        naming the variable (``GATEWAY_PORT: Input should be a valid integer (got 'abc')``)."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe(exc, written_as=lambda name: ENV_PREFIX + name.upper())) from None

    def check_startup(self) -> None:
        """Refuse a replicated set-up whose state is not shared and, outside development, a
        missing or placeholder admin token (``ConfigError``)."""
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
        self._check_usage_webhook()
        if self.environment == "development":
            return
        problem = admin_token_problem(self.admin_token)
        if problem is not None:
            raise ConfigError(
                f"GATEWAY_ADMIN_TOKEN {problem}; {self.environment} needs a random token of at least "
                f"{MIN_ADMIN_TOKEN_CHARS} characters, e.g. from "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
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
    return None
