"""What only PostgreSQL has to get right: several processes migrating and writing at once, and
failures of the server itself. The shared contract is in ``test_contract.py``."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from collections.abc import AsyncIterator
from multiprocessing.synchronize import Barrier

import psycopg
import pytest

from gateway.store import StoreError, create_store
from gateway.store.postgres import PostgresStore, conninfo, with_search_path
from gateway.store.postgres_schema import MIGRATIONS
from tests.api.store.test_contract import T0, row
from tests.support.postgres import require_postgres, temporary_schema


@pytest.fixture
async def schema_url() -> AsyncIterator[str]:
    """A URL on a fresh, empty schema (no store opened on it yet)."""
    require_postgres()
    async with temporary_schema() as url:
        yield url


async def _versions(url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(conninfo(url)) as conn:
        cursor = await conn.execute("SELECT version FROM schema_version ORDER BY version")
        return [r[0] for r in await cursor.fetchall()]


def test_urls_select_the_postgres_store_and_keep_their_query() -> None:
    for url in ("postgresql://h/db", "postgres://h/db", "postgresql+psycopg://h/db"):
        assert isinstance(create_store(url), PostgresStore)
    assert conninfo("postgres://u@h:5/db?sslmode=disable") == "postgresql://u@h:5/db?sslmode=disable"
    scoped = with_search_path("postgresql://h/db?sslmode=disable&options=-cwork_mem%3D8MB", "s1")
    assert scoped == "postgresql://h/db?sslmode=disable&options=-cwork_mem%3D8MB%20-csearch_path%3Ds1"


async def test_stores_opening_at_once_apply_each_migration_once(schema_url: str) -> None:
    stores = [PostgresStore(schema_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert await _versions(schema_url) == list(range(1, len(MIGRATIONS) + 1))
        assert [await s.insert_usage([row(f"r{i}", "t", "k", T0)]) for i, s in enumerate(stores)] == [1, 1, 1]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    reopened = PostgresStore(schema_url)
    await reopened.open()  # an up-to-date schema is left alone
    await reopened.close()
    assert await _versions(schema_url) == list(range(1, len(MIGRATIONS) + 1))


def _write_overlapping(url: str, ids: list[int], seed: int, barrier: Barrier) -> int:
    """In a child process: open (migrating) and insert ``ids`` in shuffled batches, in step with
    the other children. Returns the rows this process added."""

    async def run() -> int:
        store = PostgresStore(url)
        barrier.wait()
        await store.open()
        try:
            shuffled = random.Random(seed).sample(ids, len(ids))
            batches = [shuffled[i : i + 50] for i in range(0, len(shuffled), 50)]
            barrier.wait()
            added = 0
            for batch in batches:
                added += await store.insert_usage([row(f"req_{i:05d}", "t", "k", T0 + i) for i in batch])
            return added
        finally:
            await store.close()

    return asyncio.run(run())


def _child(
    url: str, ids: list[int], seed: int, barrier: Barrier, results: multiprocessing.Queue[int | str]
) -> None:
    try:
        results.put(_write_overlapping(url, ids, seed, barrier))
    except BaseException as exc:
        barrier.abort()  # the others stop waiting for this one
        results.put(f"{type(exc).__name__}: {exc}")


async def test_processes_writing_overlapping_batches_store_each_row_once(schema_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3, timeout=60), ctx.Queue()
    total = 3000
    # Every id is written by two of the three processes, in a different order in each.
    id_sets = [[(p * 1000 + j) % total for j in range(2000)] for p in range(3)]
    children = [
        ctx.Process(target=_child, args=(schema_url, ids, seed, barrier, results))
        for seed, ids in enumerate(id_sets)
    ]
    for child in children:
        child.start()
    try:
        added = [await asyncio.to_thread(results.get, True, 90) for _ in children]
    finally:
        for child in children:
            await asyncio.to_thread(child.join, 30)
            if child.is_alive():
                child.kill()
    assert all(isinstance(n, int) for n in added), added
    assert sum(n for n in added if isinstance(n, int)) == total
    store = PostgresStore(schema_url)
    await store.open()
    try:
        stored = await store.list_usage("t")
    finally:
        await store.close()
    assert [r.request_id for r in stored] == [f"req_{i:05d}" for i in range(total)]
    assert await _versions(schema_url) == list(range(1, len(MIGRATIONS) + 1))


async def test_an_unreachable_database_raises_store_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout_s=1)
    with pytest.raises(StoreError, match="127.0.0.1"):
        await store.open()
    with pytest.raises(StoreError):
        await store.insert_usage([row("r1", "t", "k", T0)])
    await store.close()


class _Proxy:
    """A TCP relay to the PostgreSQL server that can be cut, as if the server went away."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self._target)
        self._writers += [client_writer, server_writer]

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def test_a_database_that_goes_away_raises_store_error_and_is_used_again_when_back(
    schema_url: str,
) -> None:
    target = psycopg.conninfo.conninfo_to_dict(conninfo(schema_url))
    host, port = str(target.get("host") or "127.0.0.1"), str(target.get("port") or 5432)
    proxy = _Proxy(host, int(port))
    await proxy.start()
    proxied = schema_url.replace(f":{port}/", f":{proxy.port}/", 1)
    store = PostgresStore(proxied, timeout_s=1)
    await store.open()
    try:
        assert await store.insert_usage([row("r1", "t", "k", T0)]) == 1
        await proxy.cut()
        for record in (row("r2", "t", "k", T0), row("r3", "t", "k", T0)):
            with pytest.raises(StoreError):
                await store.insert_usage([record])
        with pytest.raises(StoreError):
            await store.get_key_by_hash("h" * 64)
        await proxy.start()  # same port
        # The pool reconnects in the background with backoff: retry as the ledger writer does.
        deadline = time.monotonic() + 20
        while True:
            try:
                assert await store.insert_usage([row("r2", "t", "k", T0)]) == 1
                break
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert [r.request_id for r in await store.list_usage("t")] == ["r1", "r2"]
    finally:
        await store.close()
        await proxy.cut()
