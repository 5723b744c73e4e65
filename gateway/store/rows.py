"""What both stores share: the columns they select and how a row becomes a record.

The backends differ only in how a key's model list and a limits object are stored (JSON text in
SQLite; a text array and JSONB in PostgreSQL), so those decoders come in as arguments.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.limit_spec import LimitSpec
from gateway.records import ApiKey, Outcome, Tenant, TenantStatus, UsageRecord

KEY_COLUMNS = (
    "k.id, k.tenant_id, t.name, k.key_hash, k.prefix, k.created_at, k.models, "
    "k.expires_at, k.revoked_at, t.status, k.limits, t.limits"
)
KEY_FROM = "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
TENANT_COLUMNS = "id, name, created_at, status, limits"
# The ledger's columns, in the order every row tuple and ``usage_from_row`` use.
USAGE_FIELDS = (
    "request_id",
    "tenant_id",
    "key_id",
    "model",
    "api",
    "started_at",
    "endpoint",
    "outcome",
    "http_status",
    "prompt_tokens",
    "completion_tokens",
    "ended_at",
    "ttft_s",
    "error_code",
    "cost_pico",
    "price_version",
    "cached_tokens",
    "choices",
    "service_tier",
    "adjusts",
)
USAGE_COLUMNS = ", ".join(USAGE_FIELDS)

LimitsDecoder = Callable[[Any], LimitSpec | None]
ModelsDecoder = Callable[[Any], frozenset[str] | None]


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(8)}"


def new_key(
    tenant: Tenant, key_hash: str, prefix: str, models: frozenset[str] | None, expires_at: float | None
) -> ApiKey:
    """A key about to be inserted for ``tenant`` (created now, with a new id)."""
    return ApiKey(
        id=new_id("key"),
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        key_hash=key_hash,
        prefix=prefix,
        created_at=time.time(),
        models=models,
        expires_at=expires_at,
        tenant_status=tenant.status,
    )


def tenant_from_row(row: Sequence[Any], limits: LimitsDecoder) -> Tenant:
    return Tenant(
        id=row[0], name=row[1], created_at=row[2], status=TenantStatus(row[3]), limits=limits(row[4])
    )


def key_from_row(row: Sequence[Any], models: ModelsDecoder, limits: LimitsDecoder) -> ApiKey:
    """A row of ``KEY_COLUMNS``."""
    return ApiKey(
        id=row[0],
        tenant_id=row[1],
        tenant_name=row[2],
        key_hash=row[3],
        prefix=row[4],
        created_at=row[5],
        models=models(row[6]),
        expires_at=row[7],
        revoked_at=row[8],
        tenant_status=TenantStatus(row[9]),
        limits=limits(row[10]),
        tenant_limits=limits(row[11]),
    )


def usage_from_row(row: Sequence[Any]) -> UsageRecord:
    """A row of ``USAGE_COLUMNS``."""
    values = dict(zip(USAGE_FIELDS, row, strict=True))
    values["outcome"] = Outcome(values["outcome"])
    return UsageRecord(**values)


def usage_filter(
    tenant_id: str | None, start: float | None, end: float | None, placeholder: str
) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (and its arguments) for one tenant or all, between two times."""
    pairs = (("tenant_id = ", tenant_id), ("started_at >= ", start), ("started_at < ", end))
    clauses = [clause + placeholder for clause, value in pairs if value is not None]
    args = tuple(value for _, value in pairs if value is not None)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args
