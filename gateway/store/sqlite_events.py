"""The usage event log on SQLite, sharing the ``SqliteStore``'s one connection and thread."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar

from gateway.store.events import OutboxClaim, UsageEntry, entry_from_row, read_args, read_query

T = TypeVar("T")

_ADVANCE = (
    "INSERT INTO outbox_cursors (name, seq, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at "
    "WHERE excluded.seq > outbox_cursors.seq"
)


class Runner(Protocol):
    """``SqliteStore._run``: call a function with the connection, in one transaction."""

    async def __call__(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


def _cursor(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT seq FROM outbox_cursors WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row is not None else 0


class _Claim:
    def __init__(self, log: SqliteEventLog, name: str, seq: int) -> None:
        self._log = log
        self._name = name
        self.seq = seq

    async def advance(self, seq: int) -> None:
        self.seq = await self._log.advance(self._name, seq)


class SqliteEventLog:
    """``UsageEventLog`` on SQLite. A claim is an exclusive ``flock`` on a file beside the database,
    held for the round: one holder among every process on the file (``gateway serve --workers``)
    and every store in one process; a process that dies lets go of it."""

    def __init__(self, run: Runner, database: Path) -> None:
        self._run = run
        self._database = database

    async def read(self, after: int, limit: int, tenant_id: str | None = None) -> list[UsageEntry]:
        sql, args = read_query("?", tenant_id), read_args(after, limit, tenant_id)
        rows = await self._run(lambda c: c.execute(sql, args).fetchall())
        return [entry_from_row(r) for r in rows]

    async def cursor(self, name: str) -> int:
        return await self._run(lambda c: _cursor(c, name))

    async def advance(self, name: str, seq: int) -> int:
        def upsert(conn: sqlite3.Connection) -> int:
            conn.execute(_ADVANCE, (name, seq, time.time()))
            return _cursor(conn, name)

        return await self._run(upsert)

    @asynccontextmanager
    async def claim(self, name: str) -> AsyncIterator[OutboxClaim | None]:
        lock = self._database.with_name(f"{self._database.name}.outbox-{name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield _Claim(self, name, await self.cursor(name))
        finally:
            os.close(fd)  # lets go of the lock
