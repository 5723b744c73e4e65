"""SQLite store (the embedded default): WAL mode, one connection on one dedicated thread.

A single writer thread serialises access, which is what SQLite wants anyway, and keeps
blocking I/O off the event loop. Several processes may share the file (``gateway serve
--workers``): WAL lets them read beside the one writer, ``busy_timeout`` makes a writer wait its
turn rather than fail, and every write that depends on what it reads (the ledger's ``seq``, the
schema version, the reconciliation cursors) takes the write lock first (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.limit_spec import LimitSpec
from gateway.records import ApiKey, Tenant, TenantStatus, UsageGroup, UsageRecord
from gateway.store.base import UNSET, ConflictError, GroupBy, NotFoundError, _Unset
from gateway.store.rows import (
    KEY_COLUMNS,
    TENANT_COLUMNS,
    USAGE_COLUMNS,
    key_from_row,
    new_id,
    new_key,
    tenant_from_row,
    usage_filter,
    usage_from_row,
)
from gateway.store.sqlite_events import SqliteEventLog
from gateway.store.sqlite_ledger import insert_usage_batch
from gateway.store.sqlite_reconcile import SqliteReconcile
from gateway.store.sqlite_schema import migrate

T = TypeVar("T")

# Report groupings: SQL expression per ``GroupBy``.
_GROUP_EXPR = {"day": "date(started_at, 'unixepoch')", "model": "model", "key": "key_id"}


def sqlite_path(database_url: str) -> Path:
    """``sqlite:///rel.db`` → ``rel.db``; ``sqlite:////abs.db`` → ``/abs.db``."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix):
        raise ValueError(f"not a sqlite URL: {database_url!r}")
    return Path(database_url[len(prefix) :])


def _models(value: str | None) -> frozenset[str] | None:
    return frozenset(json.loads(value)) if value is not None else None


def _key(row: Sequence[Any]) -> ApiKey:
    return key_from_row(row, _models, _limits_from)


def _tenant(row: Sequence[Any]) -> Tenant:
    return tenant_from_row(row, _limits_from)


def _limits_from(value: str | None) -> LimitSpec | None:
    return LimitSpec.from_stored(json.loads(value)) if value is not None else None


def _limits_json(limits: LimitSpec | None) -> str | None:
    return json.dumps(limits.stored(), sort_keys=True) if limits is not None else None


class SqliteStore(SqliteReconcile):
    """The ``Store`` on one SQLite file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self.events = SqliteEventLog(self._run, path)

    @classmethod
    def from_url(cls, database_url: str) -> SqliteStore:
        return cls(sqlite_path(database_url))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError("store is not open")
        with self._conn:  # one transaction per call
            return fn(self._conn)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_sync)

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")  # first: another process may be switching to WAL
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.isolation_level = "DEFERRED"
        self._conn = conn
        migrate(conn)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    async def create_tenant(self, name: str) -> Tenant:
        tenant = Tenant(id=new_id("ten"), name=name, created_at=time.time())

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO tenants (id, name, status, created_at) VALUES (?, ?, ?, ?)",
                    (tenant.id, tenant.name, tenant.status, tenant.created_at),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"tenant {name!r} exists already") from exc

        await self._run(insert)
        return tenant

    async def get_tenant(self, name: str) -> Tenant:
        return await self._run(lambda c: _select_tenant(c, name))

    async def list_tenants(self, include_deleted: bool = False) -> list[Tenant]:
        where = "" if include_deleted else "WHERE status != 'deleted'"
        rows = await self._run(
            lambda c: c.execute(f"SELECT {TENANT_COLUMNS} FROM tenants {where} ORDER BY name").fetchall()
        )
        return [_tenant(r) for r in rows]

    async def set_tenant_status(self, name: str, status: TenantStatus) -> Tenant:
        def update(conn: sqlite3.Connection) -> Tenant:
            tenant = _select_tenant(conn, name)
            if tenant.status == TenantStatus.deleted and status != TenantStatus.deleted:
                raise ConflictError(f"tenant {name!r} is deleted")
            conn.execute("UPDATE tenants SET status = ? WHERE id = ?", (status.value, tenant.id))
            if status == TenantStatus.deleted:
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL",
                    (time.time(), tenant.id),
                )
            return _select_tenant(conn, name)

        return await self._run(update)

    async def set_tenant_limits(self, name: str, limits: LimitSpec | None) -> Tenant:
        def update(conn: sqlite3.Connection) -> Tenant:
            tenant = _select_tenant(conn, name)
            conn.execute("UPDATE tenants SET limits = ? WHERE id = ?", (_limits_json(limits), tenant.id))
            return _select_tenant(conn, name)

        return await self._run(update)

    async def create_key(
        self,
        tenant_name: str,
        key_hash: str,
        prefix: str,
        models: frozenset[str] | None,
        expires_at: float | None,
    ) -> ApiKey:
        tenant = await self.get_tenant(tenant_name)
        if tenant.status == TenantStatus.deleted:
            raise ConflictError(f"tenant {tenant_name!r} is deleted")
        key = new_key(tenant, key_hash, prefix, models, expires_at)
        models_json = json.dumps(sorted(models)) if models is not None else None
        await self._run(
            lambda c: c.execute(
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, models, expires_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.id, key.tenant_id, key_hash, prefix, models_json, expires_at, key.created_at),
            )
        )
        return key

    async def get_key(self, key_id: str) -> ApiKey:
        return await self._run(lambda c: _select_key(c, key_id))

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
                "WHERE k.key_hash = ?",
                (key_hash,),
            ).fetchone()
        )
        return _key(row) if row is not None else None

    async def list_keys(self, tenant_name: str | None = None) -> list[ApiKey]:
        where, args = ("WHERE t.name = ?", (tenant_name,)) if tenant_name else ("", ())
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
                f"{where} ORDER BY k.created_at",
                args,
            ).fetchall()
        )
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> ApiKey:
        def revoke(conn: sqlite3.Connection) -> ApiKey:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            return _select_key(conn, key_id)

        return await self._run(revoke)

    async def update_key(
        self,
        key_id: str,
        models: frozenset[str] | None | _Unset = UNSET,
        expires_at: float | None | _Unset = UNSET,
        limits: LimitSpec | None | _Unset = UNSET,
    ) -> ApiKey:
        def update(conn: sqlite3.Connection) -> ApiKey:
            _select_key(conn, key_id)
            if not isinstance(limits, _Unset):
                conn.execute("UPDATE api_keys SET limits = ? WHERE id = ?", (_limits_json(limits), key_id))
            if not isinstance(models, _Unset):
                models_json = json.dumps(sorted(models)) if models is not None else None
                conn.execute("UPDATE api_keys SET models = ? WHERE id = ?", (models_json, key_id))
            if not isinstance(expires_at, _Unset):
                conn.execute("UPDATE api_keys SET expires_at = ? WHERE id = ?", (expires_at, key_id))
            return _select_key(conn, key_id)

        return await self._run(update)

    async def insert_usage(self, records: Sequence[UsageRecord]) -> int:
        return await self._run(lambda conn: insert_usage_batch(conn, records))

    async def list_usage(
        self, tenant_id: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[UsageRecord]:
        where, args = usage_filter(tenant_id, start, end, "?")
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {USAGE_COLUMNS} FROM usage_ledger {where} ORDER BY started_at, request_id", args
            ).fetchall()
        )
        return [usage_from_row(r) for r in rows]

    async def usage_report(
        self, tenant_id: str | None, start: float, end: float, group_by: GroupBy
    ) -> list[UsageGroup]:
        where, args = usage_filter(tenant_id, start, end, "?")
        expr = _GROUP_EXPR[group_by]
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {expr} AS g, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_pico), "
                f"SUM(cached_tokens) "
                f"FROM usage_ledger {where} GROUP BY g ORDER BY g",
                args,
            ).fetchall()
        )
        return [UsageGroup(str(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


def _select_tenant(conn: sqlite3.Connection, name: str) -> Tenant:
    row = conn.execute(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFoundError(f"no tenant named {name!r}")
    return _tenant(row)


def _select_key(conn: sqlite3.Connection, key_id: str) -> ApiKey:
    row = conn.execute(
        f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?",
        (key_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no key with id {key_id!r}")
    return _key(row)
