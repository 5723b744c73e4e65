"""A fresh, open store per test, for every backend the contract covers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from gateway.store import Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.support.postgres import require_postgres, temporary_schema


@asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[Store]:
    yield SqliteStore(tmp_path / "ledger.db")


@asynccontextmanager
async def _postgres(tmp_path: Path) -> AsyncIterator[Store]:
    require_postgres()
    async with temporary_schema() as url:
        yield PostgresStore.from_url(url)


# Each backend yields an unopened store and cleans up after it (the PostgreSQL one drops its schema).
BACKENDS: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()
