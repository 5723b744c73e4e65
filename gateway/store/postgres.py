"""PostgreSQL store: psycopg 3 async, a small connection pool, one transaction per call.

The schema lives in whatever schema the connection's ``search_path`` names, so a URL such as
``postgresql://host/db?options=-csearch_path%3Dgateway`` keeps it out of ``public`` (tests use
this to give each test a schema of its own). Several gateway processes may start at once: the
migrations run under a transaction-scoped advisory lock, so exactly one applies each version.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from gateway.limit_spec import LimitSpec
from gateway.records import ApiKey, Tenant, TenantStatus, UsageGroup, UsageRecord
from gateway.store.base import UNSET, ConflictError, GroupBy, NotFoundError, StoreError, _Unset
from gateway.store.postgres_events import PostgresEventLog
from gateway.store.postgres_ledger import insert_usage_rows
from gateway.store.postgres_pool import ConnectionSource
from gateway.store.postgres_reconcile import PostgresReconcile
from gateway.store.postgres_schema import Connection, migrate
from gateway.store.rows import (
    KEY_COLUMNS,
    KEY_FROM,
    TENANT_COLUMNS,
    USAGE_COLUMNS,
    key_from_row,
    new_id,
    new_key,
    tenant_from_row,
    usage_filter,
    usage_from_row,
)

# Report groupings: SQL expression per ``GroupBy``; days are UTC whatever the session's TimeZone.
_UTC_DAY = "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
_GROUP_EXPR = {"day": _UTC_DAY, "model": "model", "key": "key_id"}


def conninfo(database_url: str) -> str:
    """The libpq URL: ``postgres://`` and ``postgresql+psycopg://`` become ``postgresql://``."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql URL: {database_url!r}")
    return f"postgresql://{rest}"


def with_search_path(database_url: str, schema: str) -> str:
    """``database_url`` with its connections' ``search_path`` set to ``schema`` (added to libpq options)."""
    parts = urllib.parse.urlsplit(database_url)
    query = urllib.parse.parse_qsl(parts.query)
    options = " ".join([v for k, v in query if k == "options"] + [f"-csearch_path={schema}"])
    query = [(k, v) for k, v in query if k != "options"] + [("options", options)]
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)  # libpq reads %20, not +
    return urllib.parse.urlunsplit(parts._replace(query=encoded))


def report_query(
    tenant_id: str | None, start: float, end: float, group_by: GroupBy
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters ``usage_report`` runs (also what the index tests ``EXPLAIN``)."""
    where, args = usage_filter(tenant_id, start, end, "%s")
    sql = (
        f"SELECT {_GROUP_EXPR[group_by]} AS g, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
        f"SUM(cost_pico), SUM(cached_tokens) FROM usage_ledger {where} GROUP BY g ORDER BY g"
    )
    return sql, args


def _models(value: list[str] | None) -> frozenset[str] | None:
    return frozenset(value) if value is not None else None


def _key(row: Sequence[Any]) -> ApiKey:
    return key_from_row(row, _models, _limits_from)


def _tenant(row: Sequence[Any]) -> Tenant:
    return tenant_from_row(row, _limits_from)


def _limits_from(value: dict[str, Any] | None) -> LimitSpec | None:
    return LimitSpec.from_stored(value) if value is not None else None


def _limits_json(limits: LimitSpec | None) -> Jsonb | None:
    return Jsonb(limits.stored()) if limits is not None else None


class PostgresStore(PostgresReconcile):
    """The ``Store`` on a PostgreSQL database (``postgresql://`` or ``postgres://`` URLs).

    Every database failure surfaces as a ``StoreError`` (unique violations as ``ConflictError``),
    so callers treat an unreachable database the same way whatever the driver said.
    """

    def __init__(self, database_url: str, pool_size: int = 4, timeout_s: float = 10.0) -> None:
        self._conninfo = conninfo(database_url)
        self._timeout_s = timeout_s  # to connect, and to wait for a free pooled connection
        # Pooled connections; after an outage a fresh pool within a second of the database's return.
        self._source = ConnectionSource(self._conninfo, pool_size, timeout_s)
        self._open = False
        self.events = PostgresEventLog(self._connection)

    @classmethod
    def from_url(cls, database_url: str) -> PostgresStore:
        return cls(database_url)

    async def open(self) -> None:
        # A direct connection first: an unreachable server fails at once with libpq's own
        # message, instead of after the pool's retries as a bare timeout.
        with _translated_errors():
            connection = await psycopg.AsyncConnection.connect(
                self._conninfo, connect_timeout=max(1, round(self._timeout_s))
            )
            async with connection:
                await migrate(connection)
            await self._source.open()
        self._open = True

    async def close(self) -> None:
        self._open = False
        await self._source.close()

    @asynccontextmanager
    async def _connection(self, transaction: bool = True) -> AsyncIterator[Connection]:
        """A pooled connection, in a transaction (committed on success, else rolled back) unless
        the caller runs a single statement: one round trip instead of three in autocommit mode."""
        if not self._open:
            raise StoreError("store is not open")
        with _translated_errors():
            async with self._source.connection() as conn:
                if not transaction:
                    yield conn
                    return
                async with conn.transaction():
                    yield conn

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[TupleRow]:
        """Run one statement (atomic by itself) and return its rows."""
        async with self._connection(transaction=False) as conn:
            return await (await conn.execute(sql, args)).fetchall()

    async def create_tenant(self, name: str) -> Tenant:
        tenant = Tenant(id=new_id("ten"), name=name, created_at=time.time())
        rows = await self._fetchall(
            "INSERT INTO tenants (id, name, status, created_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING id",
            (tenant.id, tenant.name, tenant.status.value, tenant.created_at),
        )
        if not rows:
            raise ConflictError(f"tenant {name!r} exists already")
        return tenant

    async def get_tenant(self, name: str) -> Tenant:
        async with self._connection(transaction=False) as conn:
            return await _select_tenant(conn, name)

    async def list_tenants(self, include_deleted: bool = False) -> list[Tenant]:
        where = "" if include_deleted else "WHERE status != 'deleted'"
        rows = await self._fetchall(f"SELECT {TENANT_COLUMNS} FROM tenants {where} ORDER BY name")
        return [_tenant(r) for r in rows]

    async def set_tenant_status(self, name: str, status: TenantStatus) -> Tenant:
        async with self._connection() as conn:
            tenant = await _select_tenant(conn, name, lock="FOR UPDATE")
            if tenant.status == TenantStatus.deleted and status != TenantStatus.deleted:
                raise ConflictError(f"tenant {name!r} is deleted")
            await conn.execute("UPDATE tenants SET status = %s WHERE id = %s", (status.value, tenant.id))
            if status == TenantStatus.deleted:
                await conn.execute(
                    "UPDATE api_keys SET revoked_at = %s WHERE tenant_id = %s AND revoked_at IS NULL",
                    (time.time(), tenant.id),
                )
            return await _select_tenant(conn, name)

    async def set_tenant_limits(self, name: str, limits: LimitSpec | None) -> Tenant:
        async with self._connection() as conn:
            tenant = await _select_tenant(conn, name, lock="FOR UPDATE")
            await conn.execute(
                "UPDATE tenants SET limits = %s WHERE id = %s", (_limits_json(limits), tenant.id)
            )
            return await _select_tenant(conn, name)

    async def create_key(
        self,
        tenant_name: str,
        key_hash: str,
        prefix: str,
        models: frozenset[str] | None,
        expires_at: float | None,
    ) -> ApiKey:
        async with self._connection() as conn:
            # FOR SHARE: a concurrent delete waits, so no key is added to a tenant being deleted.
            tenant = await _select_tenant(conn, tenant_name, lock="FOR SHARE")
            if tenant.status == TenantStatus.deleted:
                raise ConflictError(f"tenant {tenant_name!r} is deleted")
            key = new_key(tenant, key_hash, prefix, models, expires_at)
            await conn.execute(
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, models, expires_at, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (key.id, key.tenant_id, key_hash, prefix, _models_value(models), expires_at, key.created_at),
            )
        return key

    async def get_key(self, key_id: str) -> ApiKey:
        async with self._connection(transaction=False) as conn:
            return await _select_key(conn, key_id)

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        rows = await self._fetchall(f"SELECT {KEY_COLUMNS} {KEY_FROM} WHERE k.key_hash = %s", (key_hash,))
        return _key(rows[0]) if rows else None

    async def list_keys(self, tenant_name: str | None = None) -> list[ApiKey]:
        where, args = ("WHERE t.name = %s", (tenant_name,)) if tenant_name else ("", ())
        rows = await self._fetchall(
            f"SELECT {KEY_COLUMNS} {KEY_FROM} {where} ORDER BY k.created_at, k.id", args
        )
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> ApiKey:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            return await _select_key(conn, key_id)

    async def update_key(
        self,
        key_id: str,
        models: frozenset[str] | None | _Unset = UNSET,
        expires_at: float | None | _Unset = UNSET,
        limits: LimitSpec | None | _Unset = UNSET,
    ) -> ApiKey:
        async with self._connection() as conn:
            await _select_key(conn, key_id)
            if not isinstance(limits, _Unset):
                await conn.execute(
                    "UPDATE api_keys SET limits = %s WHERE id = %s", (_limits_json(limits), key_id)
                )
            if not isinstance(models, _Unset):
                await conn.execute(
                    "UPDATE api_keys SET models = %s WHERE id = %s", (_models_value(models), key_id)
                )
            if not isinstance(expires_at, _Unset):
                await conn.execute("UPDATE api_keys SET expires_at = %s WHERE id = %s", (expires_at, key_id))
            return await _select_key(conn, key_id)

    async def insert_usage(self, records: Sequence[UsageRecord]) -> int:
        if not records:
            return 0
        async with self._connection() as conn:
            return await insert_usage_rows(conn, records)

    async def list_usage(
        self, tenant_id: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[UsageRecord]:
        where, args = usage_filter(tenant_id, start, end, "%s")
        rows = await self._fetchall(
            f"SELECT {USAGE_COLUMNS} FROM usage_ledger {where} ORDER BY started_at, request_id", args
        )
        return [usage_from_row(r) for r in rows]

    async def usage_report(
        self, tenant_id: str | None, start: float, end: float, group_by: GroupBy
    ) -> list[UsageGroup]:
        rows = await self._fetchall(*report_query(tenant_id, start, end, group_by))
        # SUM over BIGINT is NUMERIC in PostgreSQL (it cannot overflow); Python ints are exact too.
        return [UsageGroup(str(r[0]), *(int(v) for v in r[1:6])) for r in rows]


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Driver errors as the store's: unique violations → ``ConflictError``, the rest → ``StoreError``."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise ConflictError(str(exc).strip()) from exc
    except psycopg.Error as exc:
        raise StoreError(f"postgresql: {str(exc).strip() or type(exc).__name__}") from exc


def _models_value(models: frozenset[str] | None) -> list[str] | None:
    return sorted(models) if models is not None else None


async def _select_tenant(
    conn: Connection, name: str, lock: Literal["", "FOR UPDATE", "FOR SHARE"] = ""
) -> Tenant:
    cursor = await conn.execute(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = %s {lock}", (name,))
    row = await cursor.fetchone()
    if row is None:
        raise NotFoundError(f"no tenant named {name!r}")
    return _tenant(row)


async def _select_key(conn: Connection, key_id: str) -> ApiKey:
    cursor = await conn.execute(f"SELECT {KEY_COLUMNS} {KEY_FROM} WHERE k.id = %s", (key_id,))
    row = await cursor.fetchone()
    if row is None:
        raise NotFoundError(f"no key with id {key_id!r}")
    return _key(row)
