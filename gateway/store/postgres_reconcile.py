"""Reconciliation on PostgreSQL: ``PostgresStore``'s engine-counter and settlement methods.

Several replicas run these at once. A reading holds its engine's cursor row (``FOR UPDATE``) from
its read to its commit, so readings of one engine are counted one after another. A settlement
takes its period with ``FOR UPDATE SKIP LOCKED``: a second replica passes over a period being
settled (and, since an engine's periods settle in order, over that engine's later ones) and the
``settled_at IS NULL`` guard makes a late duplicate a no-op.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from gateway.records import EngineSample
from gateway.store import reconcile_sql as sql
from gateway.store.base import StoreError
from gateway.store.counters import CounterAdvance, EngineCursor, advance
from gateway.store.postgres_ledger import insert_usage_rows
from gateway.store.postgres_schema import Connection
from gateway.store.rows import usage_from_row
from gateway.store.settlement import PeriodToSettle, ReconcileHour, SettledPeriod, SettlementPlan

_HOUR_OF_ENDED_AT = "floor(ended_at / 3600) * 3600"


def _pg(statement: str) -> str:
    return statement.replace("?", "%s")


_INSERT_CURSOR = _pg(sql.INSERT_CURSOR)
_LOCK_CURSOR = _pg(sql.SELECT_CURSOR) + " FOR UPDATE"
_UPDATE_CURSOR = _pg(sql.UPDATE_CURSOR)
_ADD_ENGINE_USAGE = _pg(sql.ADD_ENGINE_USAGE)
_INSERT_PERIOD = _pg(sql.INSERT_PERIOD)
_PICK_PERIOD = _pg(sql.PICK_PERIOD) + " FOR UPDATE OF p SKIP LOCKED"
_SELECT_CARRY = _pg(sql.SELECT_CARRY)
_LEDGER_SUMS = _pg(sql.LEDGER_SUMS)
_CUT_ROWS = _pg(sql.CUT_ROWS)
_MARK_SETTLED = _pg(sql.MARK_SETTLED)
_ENGINE_HOURS = _pg(sql.ENGINE_HOURS)
_LEDGER_HOURS = _pg(sql.ledger_hours(_HOUR_OF_ENDED_AT))
_DRIFT = _pg(sql.DRIFT)


class PostgresReconcile:
    """Mixed into ``PostgresStore``, which provides ``_connection``."""

    def _connection(self, transaction: bool = True) -> AbstractAsyncContextManager[Connection]:
        raise NotImplementedError

    async def record_engine_sample(self, sample: EngineSample) -> CounterAdvance | None:
        async with self._connection() as conn:
            first = EngineCursor.first(sample)
            if (await conn.execute(_INSERT_CURSOR, sql.cursor_values(first))).rowcount:
                return None  # the baseline
            row = await (await conn.execute(_LOCK_CURSOR, (sample.engine,))).fetchone()
            if row is None:
                raise StoreError(f"engine counters of {sample.engine} vanished")
            step = advance(sql.cursor_from_row(row), sample)
            if step is None:
                return None
            await conn.execute(_UPDATE_CURSOR, sql.update_cursor_args(step.cursor))
            usage = sql.engine_usage_args(step)
            if usage is not None:
                await conn.execute(_ADD_ENGINE_USAGE, usage)
            if step.period is not None:
                await conn.execute(_INSERT_PERIOD, sql.period_values(step.period))
            return step

    async def settle_next_period(
        self, due_before: float, settled_at: float, plan: SettlementPlan
    ) -> SettledPeriod | None:
        async with self._connection() as conn:
            row = await (await conn.execute(_PICK_PERIOD, (due_before,))).fetchone()
            if row is None:
                return None
            period = sql.period_from_row(row)
            carry = await (await conn.execute(_SELECT_CARRY, (period.engine, period.end_at))).fetchone()
            args = sql.period_rows_args(period)
            ledger = sql.ledger_tokens(await (await conn.execute(_LEDGER_SUMS, args)).fetchone())
            cut = [usage_from_row(r) for r in await (await conn.execute(_CUT_ROWS, args)).fetchall()]
            carried = (int(carry[0] or 0), int(carry[1] or 0)) if carry is not None else (0, 0)
            settlement = plan(PeriodToSettle(period, ledger, cut, *carried))
            await insert_usage_rows(conn, settlement.adjustments)
            settled = SettledPeriod(period, ledger, settlement)
            marked = await conn.execute(_MARK_SETTLED, sql.mark_settled_args(settled, settled_at))
            if marked.rowcount != 1:  # settled meanwhile: roll the adjustments back
                raise StoreError(f"period of {period.engine} ending {period.end_at} was settled twice")
            return settled

    async def reconcile_hours(self, start: float, end: float) -> list[ReconcileHour]:
        async with self._connection(transaction=False) as conn:
            engine = await (await conn.execute(_ENGINE_HOURS, (start, end))).fetchall()
            ledger = await (await conn.execute(_LEDGER_HOURS, (start, end))).fetchall()
        return sql.reconcile_hours(engine, ledger)

    async def metering_drift(self, since: float) -> dict[str, int]:
        async with self._connection(transaction=False) as conn:
            rows = await (await conn.execute(_DRIFT, (since,))).fetchall()
        return {str(engine): int(tokens) for engine, tokens in rows}
