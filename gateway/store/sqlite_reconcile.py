"""Reconciliation on SQLite: ``SqliteStore``'s engine-counter and settlement methods.

Each method starts with ``BEGIN IMMEDIATE``, so it holds SQLite's write lock from its first read:
two processes (or two stores) on one file cannot both read a cursor or a period and then write
from what they read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from gateway.records import EngineSample
from gateway.store import reconcile_sql as sql
from gateway.store.base import StoreError
from gateway.store.counters import CounterAdvance, EngineCursor, advance
from gateway.store.rows import usage_from_row
from gateway.store.settlement import PeriodToSettle, ReconcileHour, SettledPeriod, SettlementPlan
from gateway.store.sqlite_ledger import insert_usage_rows

T = TypeVar("T")
_HOUR_OF_ENDED_AT = "CAST(ended_at / 3600 AS INTEGER) * 3600.0"


class SqliteReconcile:
    """Mixed into ``SqliteStore``, which provides ``_run``."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def record_engine_sample(self, sample: EngineSample) -> CounterAdvance | None:
        return await self._run(lambda conn: _record_sample(conn, sample))

    async def settle_next_period(
        self, due_before: float, settled_at: float, plan: SettlementPlan
    ) -> SettledPeriod | None:
        return await self._run(lambda conn: _settle_next(conn, due_before, settled_at, plan))

    async def reconcile_hours(self, start: float, end: float) -> list[ReconcileHour]:
        def read(conn: sqlite3.Connection) -> list[ReconcileHour]:
            engine = conn.execute(sql.ENGINE_HOURS, (start, end)).fetchall()
            ledger = conn.execute(sql.ledger_hours(_HOUR_OF_ENDED_AT), (start, end)).fetchall()
            return sql.reconcile_hours(engine, ledger)

        return await self._run(read)

    async def metering_drift(self, since: float) -> dict[str, int]:
        rows = await self._run(lambda conn: conn.execute(sql.DRIFT, (since,)).fetchall())
        return {str(engine): int(tokens) for engine, tokens in rows}


def _record_sample(conn: sqlite3.Connection, sample: EngineSample) -> CounterAdvance | None:
    conn.execute("BEGIN IMMEDIATE")
    first = EngineCursor.first(sample)
    if conn.execute(sql.INSERT_CURSOR, sql.cursor_values(first)).rowcount:
        return None  # the baseline
    row = conn.execute(sql.SELECT_CURSOR, (sample.engine,)).fetchone()
    step = advance(sql.cursor_from_row(row), sample)
    if step is None:
        return None
    conn.execute(sql.UPDATE_CURSOR, sql.update_cursor_args(step.cursor))
    usage = sql.engine_usage_args(step)
    if usage is not None:
        conn.execute(sql.ADD_ENGINE_USAGE, usage)
    if step.period is not None:
        conn.execute(sql.INSERT_PERIOD, sql.period_values(step.period))
    return step


def _settle_next(
    conn: sqlite3.Connection, due_before: float, settled_at: float, plan: SettlementPlan
) -> SettledPeriod | None:
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute(sql.PICK_PERIOD, (due_before,)).fetchone()
    if row is None:
        return None
    period = sql.period_from_row(row)
    carry = conn.execute(sql.SELECT_CARRY, (period.engine, period.end_at)).fetchone() or (0, 0)
    args = sql.period_rows_args(period)
    ledger = sql.ledger_tokens(conn.execute(sql.LEDGER_SUMS, args).fetchone())
    cut = [usage_from_row(r) for r in conn.execute(sql.CUT_ROWS, args).fetchall()]
    settlement = plan(PeriodToSettle(period, ledger, cut, int(carry[0] or 0), int(carry[1] or 0)))
    insert_usage_rows(conn, settlement.adjustments)
    settled = SettledPeriod(period, ledger, settlement)
    if conn.execute(sql.MARK_SETTLED, sql.mark_settled_args(settled, settled_at)).rowcount != 1:
        raise StoreError(f"period of {period.engine} ending {period.end_at} was settled twice")
    return settled
