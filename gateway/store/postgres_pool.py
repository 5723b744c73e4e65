"""The PostgreSQL store's connections: a psycopg pool that is replaced once the database is back.

psycopg_pool reconnects a lost connection with exponential backoff (1 s, 2 s, 4 s, … up to its
``reconnect_timeout``): after a 30 s outage its next attempt may come 20-30 s after the database
has returned, and a caller meanwhile waits the pool's whole timeout for nothing. So a connection
error marks the source *down*; while down, every caller fails at once, and at most every
``probe_interval_s`` one of them tries a fresh connection of its own. The first that succeeds
opens a new pool (no backoff state) in place of the old one: rows waiting in the journal are
written within about a second of the database's return.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.clock import Clock, monotonic
from gateway.store.postgres_schema import Connection

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.5
PROBE_CONNECT_TIMEOUT_S = 2  # libpq's shortest


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (not that a statement failed): no
    connection in time, a connection that broke (no SQLSTATE), class 08 (connection exception)
    or 57P (the server shutting down, crashed or starting)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


class ConnectionSource:
    """Pooled connections to one database, with fast recovery after an outage (module docstring)."""

    def __init__(
        self,
        conninfo: str,
        pool_size: int,
        timeout_s: float,
        *,
        probe_interval_s: float = PROBE_INTERVAL_S,
        clock: Clock = monotonic,
        open_pool: Callable[[], Awaitable[AsyncConnectionPool[Connection]]] | None = None,
        probe: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._clock = clock
        self._open_pool = open_pool or self._new_pool
        self._probe = probe or self._connect_once
        self._pool: AsyncConnectionPool[Connection] | None = None
        self.down = False
        self._next_probe = 0.0
        self._recovering = asyncio.Lock()

    async def open(self) -> None:
        self._pool = await self._open_pool()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; raises ``psycopg.OperationalError`` at once while the database is
        known to be down and not yet back."""
        if self.down:
            await self._recover()
        pool = self._pool
        if pool is None:
            raise psycopg.OperationalError("the store is not open")
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            if connection_lost(exc) and not self.down:
                logger.warning("database unreachable (%s); probing for its return", str(exc).strip())
                self.down = True
                self._next_probe = self._clock()
            raise

    async def _recover(self) -> None:
        """Probe with a fresh connection (one caller at a time, at most every interval); once
        it connects, swap in a new pool."""
        if self._recovering.locked():
            raise psycopg.OperationalError("the database is unreachable")  # another caller probes
        async with self._recovering:
            if not self.down:
                return  # another caller recovered meanwhile
            now = self._clock()
            if now < self._next_probe:
                raise psycopg.OperationalError("the database is unreachable")
            self._next_probe = now + self._probe_interval_s
            await self._probe()  # raises while the database is still down
            old, self._pool = self._pool, await self._open_pool()
            self.down = False
            logger.warning("database reachable again: new connection pool")
        if old is not None:
            await old.close(timeout=1.0)  # connections still out are closed when given back

    async def _connect_once(self) -> None:
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, connect_timeout=PROBE_CONNECT_TIMEOUT_S
        )
        await connection.close()

    async def _new_pool(self) -> AsyncConnectionPool[Connection]:
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
            timeout=self._timeout_s,
            kwargs={"autocommit": True},
            open=False,
            name="gateway-store",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout_s)
        except BaseException:
            await pool.close()
            raise
        return pool
