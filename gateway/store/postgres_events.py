"""The usage event log on PostgreSQL, on the ``PostgresStore``'s connection pool.

Reading after a ``seq`` is safe against concurrent writers because ledger batches commit one at a
time in ``seq`` order (``PostgresStore.insert_usage``). A claim is a row lock on the outbox's cursor
row held for the round (``FOR UPDATE SKIP LOCKED``): another replica's claim skips the row and
sits the round out, and the cursor moves in the same transaction, so the next holder reads exactly
where this one stopped. A replica that dies mid-round drops its connection, and with it the lock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from gateway.store.events import OutboxClaim, UsageEntry, entry_from_row, read_args, read_query
from gateway.store.postgres_schema import Connection

ConnectionFactory = Callable[[bool], AbstractAsyncContextManager[Connection]]

_ENSURE = (
    "INSERT INTO outbox_cursors (name, seq, updated_at) VALUES (%s, 0, %s) ON CONFLICT (name) DO NOTHING"
)
_ADVANCE = (
    "INSERT INTO outbox_cursors (name, seq, updated_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at "
    "WHERE outbox_cursors.seq < EXCLUDED.seq"
)


async def _cursor(conn: Connection, name: str, lock: str = "") -> int | None:
    cursor = await conn.execute(f"SELECT seq FROM outbox_cursors WHERE name = %s {lock}", (name,))
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else None


class _Claim:
    """The locked cursor row, moved on inside the claim's transaction."""

    def __init__(self, conn: Connection, name: str, seq: int) -> None:
        self._conn = conn
        self._name = name
        self.seq = seq

    async def advance(self, seq: int) -> None:
        if seq > self.seq:
            await self._conn.execute(
                "UPDATE outbox_cursors SET seq = %s, updated_at = %s WHERE name = %s",
                (seq, time.time(), self._name),
            )
            self.seq = seq


class PostgresEventLog:
    """``UsageEventLog`` on PostgreSQL; ``connection(transaction)`` is ``PostgresStore._connection``."""

    def __init__(self, connection: ConnectionFactory) -> None:
        self._connection = connection

    async def read(self, after: int, limit: int, tenant_id: str | None = None) -> list[UsageEntry]:
        async with self._connection(False) as conn:
            cursor = await conn.execute(read_query("%s", tenant_id), read_args(after, limit, tenant_id))
            return [entry_from_row(r) for r in await cursor.fetchall()]

    async def cursor(self, name: str) -> int:
        async with self._connection(False) as conn:
            return await _cursor(conn, name) or 0

    async def advance(self, name: str, seq: int) -> int:
        async with self._connection(True) as conn:
            await conn.execute(_ADVANCE, (name, seq, time.time()))
            return await _cursor(conn, name) or 0

    @asynccontextmanager
    async def claim(self, name: str) -> AsyncIterator[OutboxClaim | None]:
        async with self._connection(False) as conn:
            # The row must exist to be locked; created outside the claim's transaction, so two
            # replicas starting at once do not wait on each other's uncommitted insert.
            await conn.execute(_ENSURE, (name, time.time()))
            async with conn.transaction():
                seq = await _cursor(conn, name, lock="FOR UPDATE SKIP LOCKED")
                yield _Claim(conn, name, seq) if seq is not None else None
