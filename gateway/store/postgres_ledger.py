"""Writing ledger rows to PostgreSQL: one statement per batch, one batch at a time.

One statement per batch: a binary array per column, unnested server-side. Faster than
executemany (pipelined) one-row INSERTs, and text arrays would be slower than both, as parsing
them costs the server more (benchmarks/RESULTS.md, "Ledger"). Batches are written one at a time
(a transaction-scoped advisory lock), so rows commit in the order of their ``seq`` and a reader of
the usage events never passes a number that a slower transaction is still to commit. A batch is a
few per second per replica; the reconciler's adjustment rows go through here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from gateway.records import UsageRecord
from gateway.store.postgres_schema import Connection
from gateway.store.rows import USAGE_COLUMNS

# Ledger columns with the array type each is sent as (one binary array per column: ``insert_usage``).
USAGE_TYPES = {
    "request_id": "text",
    "tenant_id": "text",
    "key_id": "text",
    "model": "text",
    "api": "text",
    "started_at": "float8",
    "endpoint": "text",
    "outcome": "text",
    "http_status": "int4",
    "prompt_tokens": "int8",
    "completion_tokens": "int8",
    "ended_at": "float8",
    "ttft_s": "float8",
    "error_code": "text",
    "cost_pico": "int8",
    "price_version": "text",
    "cached_tokens": "int8",
    "choices": "int4",
    "service_tier": "text",
    "adjusts": "text",
}
INSERT_USAGE = (
    f"INSERT INTO usage_ledger ({USAGE_COLUMNS}) "
    f"SELECT * FROM unnest({', '.join(f'%b::{t}[]' for t in USAGE_TYPES.values())}) "
    "ON CONFLICT (request_id) DO NOTHING"
)
# One ledger writer at a time across every gateway process; this constant spells "gw-ledgr".
LEDGER_WRITE_LOCK = 0x67772D6C65646772


def _usage_columns(records: Sequence[UsageRecord]) -> list[list[Any]]:
    """Column-wise values, sorted by request id so that concurrent batches lock rows in one order
    (two batches taking overlapping ids in opposite orders would deadlock)."""
    rows = sorted(records, key=attrgetter("request_id"))
    return [list(map(attrgetter(column), rows)) for column in USAGE_TYPES]


async def insert_usage_rows(conn: Connection, records: Sequence[UsageRecord]) -> int:
    """Insert rows keyed by request id (a row already there is left as is), inside the caller's
    transaction; returns the rows added."""
    if not records:
        return 0
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LEDGER_WRITE_LOCK,))
    cursor = await conn.execute(INSERT_USAGE, _usage_columns(records))
    return cursor.rowcount
