"""Stored limits stay readable both ways: rows written by the version before ``LimitSpec`` (a JSON
object of the set limits, money as ``monthly_cost_pico``) read back as the same limits, and rows
written now are the same JSON the previous version wrote and read."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg

from gateway.limit_spec import LimitSpec
from gateway.store.postgres import PostgresStore, conninfo
from gateway.store.sqlite import SqliteStore
from tests.support.postgres import require_postgres, temporary_schema

LIMITS = LimitSpec(rpm=60, max_concurrent=4, monthly_cost_pico=5 * 10**12)
# Exactly what the previous version wrote for those limits (``json.dumps(dict, sort_keys=True)``).
PREVIOUS_JSON = '{"max_concurrent": 4, "monthly_cost_pico": 5000000000000, "rpm": 60}'


async def test_sqlite_rows_of_the_previous_version_read_and_new_rows_match_them(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.create_tenant("old")
        key = await store.create_key("old", "a" * 64, "p", None, None)
        with sqlite3.connect(tmp_path / "s.db") as conn:  # as the previous version left them
            conn.execute("UPDATE tenants SET limits = ? WHERE name = 'old'", (PREVIOUS_JSON,))
            conn.execute("UPDATE api_keys SET limits = '{}' WHERE id = ?", (key.id,))
        assert (await store.get_tenant("old")).limits == LIMITS
        found = await store.get_key_by_hash("a" * 64)
        assert found is not None and (found.limits, found.tenant_limits) == (LimitSpec(), LIMITS)

        await store.create_tenant("new")
        await store.set_tenant_limits("new", LIMITS)
        with sqlite3.connect(tmp_path / "s.db") as conn:
            (text,) = conn.execute("SELECT limits FROM tenants WHERE name = 'new'").fetchone()
        assert text == PREVIOUS_JSON
    finally:
        await store.close()


async def test_postgres_rows_of_the_previous_version_read_and_new_rows_match_them() -> None:
    require_postgres()
    async with temporary_schema() as url:
        store = PostgresStore.from_url(url)
        await store.open()
        try:
            await store.create_tenant("old")
            async with await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True) as conn:
                await conn.execute(
                    "UPDATE tenants SET limits = %s::jsonb WHERE name = 'old'", (PREVIOUS_JSON,)
                )
            assert (await store.get_tenant("old")).limits == LIMITS

            await store.create_tenant("new")
            await store.set_tenant_limits("new", LIMITS)
            async with await psycopg.AsyncConnection.connect(conninfo(url)) as conn:
                cursor = await conn.execute("SELECT limits FROM tenants WHERE name = 'new'")
                row = await cursor.fetchone()
            assert row is not None and row[0] == json.loads(PREVIOUS_JSON)
        finally:
            await store.close()
