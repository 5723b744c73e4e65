"""Recovery after a database outage: fail fast while down, probe with a fresh connection at most
every interval, and swap in a new pool once it connects (fake pools and clock: no database)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from gateway.store.postgres_pool import ConnectionSource, connection_lost
from tests.support.clock import FakeClock


class FakePool:
    def __init__(self, name: str) -> None:
        self.name = name
        self.broken = False
        self.closed = False
        self.handed_out = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        if self.broken:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        self.handed_out += 1
        yield self.name

    async def close(self, timeout: float = 5.0) -> None:
        self.closed = True


class Database:
    """Opens fake pools and answers probes; ``up`` says whether the database is reachable."""

    def __init__(self) -> None:
        self.up = True
        self.pools: list[FakePool] = []
        self.probes = 0

    async def open_pool(self) -> Any:
        self.pools.append(FakePool(f"pool{len(self.pools)}"))
        return self.pools[-1]

    async def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise psycopg.OperationalError("connection refused")


async def use(source: ConnectionSource) -> str:
    async with source.connection() as conn:
        return str(conn)


async def test_an_outage_fails_fast_and_the_return_swaps_in_a_fresh_pool() -> None:
    clock, db = FakeClock(), Database()
    source = ConnectionSource(
        "", 4, 10.0, probe_interval_s=0.5, clock=clock, open_pool=db.open_pool, probe=db.probe
    )
    await source.open()
    assert await use(source) == "pool0"
    db.up, db.pools[0].broken = False, True
    with pytest.raises(psycopg.OperationalError, match="server closed"):
        await use(source)  # the outage shows: down from now on
    assert source.down
    with pytest.raises(psycopg.OperationalError):
        await use(source)  # the first probe, at once
    assert db.probes == 1
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError, match="unreachable"):
            await use(source)  # within the interval: no probe, no wait for the old pool
    assert db.probes == 1 and db.pools[0].handed_out == 1
    db.up = True  # the database is back...
    clock.advance(0.5)
    assert await use(source) == "pool1"  # ...and the next caller past the interval finds it
    assert db.probes == 2 and db.pools[0].closed and not source.down
    assert await use(source) == "pool1" and db.probes == 2


async def test_a_statement_error_is_not_an_outage() -> None:
    db = Database()
    source = ConnectionSource("", 4, 10.0, open_pool=db.open_pool, probe=db.probe)
    await source.open()
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with source.connection():
            raise psycopg.errors.UniqueViolation("duplicate key")
    assert not source.down


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (PoolTimeout("couldn't get a connection after 10.00 sec"), True),
        (psycopg.OperationalError("consuming input failed"), True),  # no SQLSTATE: the connection broke
        (psycopg.errors.AdminShutdown("terminating connection"), True),  # 57P01
        (psycopg.errors.ConnectionFailure("connection failure"), True),  # 08006
        (psycopg.errors.SerializationFailure("could not serialize"), False),  # 40001
        (psycopg.errors.QueryCanceled("canceling statement"), False),  # 57014
        (psycopg.errors.UniqueViolation("duplicate"), False),
    ],
)
def test_which_errors_mean_the_database_is_unreachable(error: Exception, lost: bool) -> None:
    assert connection_lost(error) is lost
