"""Throw-away PostgreSQL schemas: each test (or benchmark run) gets its own, dropped afterwards.

The server is ``$GATEWAY_TEST_POSTGRES_URL``, by default the local one. When that variable is
unset and nothing answers at the default address the PostgreSQL tests are skipped; when it is set,
an unreachable server fails them.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gateway.store.postgres import with_search_path

URL_VARIABLE = "GATEWAY_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    return os.environ.get(URL_VARIABLE) or DEFAULT_URL


@functools.cache
def _unreachable_reason() -> str | None:
    try:
        with psycopg.connect(postgres_url(), connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return f"no PostgreSQL at {postgres_url()} ({str(exc).strip()}); set {URL_VARIABLE} to run these"


def require_postgres() -> None:
    """Skip the calling test when the default server is absent; fail when a configured one is."""
    reason = _unreachable_reason()
    if reason is not None:
        if os.environ.get(URL_VARIABLE):
            pytest.fail(reason)
        pytest.skip(reason)


@asynccontextmanager
async def temporary_schema(prefix: str = "test") -> AsyncIterator[str]:
    """Create a uniquely named schema; yield a URL whose connections use it; drop it CASCADE."""
    base_url = postgres_url()
    name = f"{prefix}_{secrets.token_hex(6)}"  # lower case: needs no quoting in search_path
    schema = sql.Identifier(name)
    async with await psycopg.AsyncConnection.connect(base_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    try:
        yield with_search_path(base_url, name)
    finally:
        async with await psycopg.AsyncConnection.connect(base_url, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))


def postgres_ctl(action: str) -> None:
    """Stop (fast) or start the local cluster: a real database outage for the e2e tests and the
    fault benchmark."""
    cluster = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    fast = ["-m", "fast"] if action == "stop" else []
    argv = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", action, *fast]
    subprocess.run(argv, check=True, timeout=60, capture_output=True)
