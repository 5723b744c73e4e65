"""Writing ledger rows to SQLite (the ledger writer's batches and the reconciler's adjustments)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.records import UsageRecord
from gateway.store.rows import USAGE_COLUMNS, USAGE_FIELDS

# ``seq`` numbers rows in the order they are written (the usage events' cursor); one writer at a
# time in SQLite, so the next number is the largest so far plus one (an index lookup). Every batch
# holds the write lock from its start, so processes sharing the file (``gateway serve --workers``)
# never read the same largest ``seq`` (an ``OR IGNORE`` would drop a row whose ``seq`` collided).
_PLACEHOLDERS = ", ".join("?" * len(USAGE_FIELDS))
_INSERT_USAGE = (
    f"INSERT OR IGNORE INTO usage_ledger ({USAGE_COLUMNS}, seq) VALUES ({_PLACEHOLDERS}, "
    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM usage_ledger))"
)


def _usage_row(r: UsageRecord) -> tuple[Any, ...]:
    return (
        r.request_id,
        r.tenant_id,
        r.key_id,
        r.model,
        r.api,
        r.started_at,
        r.endpoint,
        r.outcome.value,
        r.http_status,
        r.prompt_tokens,
        r.completion_tokens,
        r.ended_at,
        r.ttft_s,
        r.error_code,
        r.cost_pico,
        r.price_version,
        r.cached_tokens,
        r.choices,
        r.service_tier,
        r.adjusts,
    )


def insert_usage_rows(conn: sqlite3.Connection, records: Sequence[UsageRecord]) -> int:
    """Insert rows keyed by request id (a row already there is left as is), inside the caller's
    transaction; returns the rows added."""
    before = conn.total_changes
    conn.executemany(_INSERT_USAGE, [_usage_row(r) for r in records])
    return conn.total_changes - before


def insert_usage_batch(conn: sqlite3.Connection, records: Sequence[UsageRecord]) -> int:
    """``insert_usage_rows`` in a transaction of its own that takes the write lock first."""
    conn.execute("BEGIN IMMEDIATE")
    return insert_usage_rows(conn, records)
