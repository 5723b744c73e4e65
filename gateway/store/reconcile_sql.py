"""The statements both stores run for reconciliation (``?`` placeholders; PostgreSQL's module
turns them into ``%s`` and adds its row locks), and the conversions between rows and records."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gateway.records import EngineCounters
from gateway.store.counters import ClosedPeriod, CounterAdvance, EngineCursor
from gateway.store.rows import USAGE_COLUMNS
from gateway.store.settlement import (
    CUT_OUTCOMES,
    LedgerTokens,
    ReconcileHour,
    SettledPeriod,
)

_CURSOR_FIELDS = (
    "engine",
    "incarnation",
    "prompt_tokens",
    "generation_tokens",
    "cached_tokens",
    "prefix_hits",
    "prefix_queries",
    "sampled_at",
    "quiet_at",
    "open_prompt_tokens",
    "open_generation_tokens",
    "open_cached_tokens",
    "open_resets",
)
_CURSOR_COLUMNS = ", ".join(_CURSOR_FIELDS)
INSERT_CURSOR = (
    f"INSERT INTO engine_counters ({_CURSOR_COLUMNS}) VALUES ({', '.join('?' * len(_CURSOR_FIELDS))}) "
    "ON CONFLICT (engine) DO NOTHING"
)
SELECT_CURSOR = f"SELECT {_CURSOR_COLUMNS} FROM engine_counters WHERE engine = ?"
UPDATE_CURSOR = (
    f"UPDATE engine_counters SET {', '.join(f'{name} = ?' for name in _CURSOR_FIELDS[1:])} WHERE engine = ?"
)
_USAGE_KINDS = (
    "prompt_tokens",
    "generation_tokens",
    "cached_tokens",
    "prefix_hits",
    "prefix_queries",
    "resets",
)
ADD_ENGINE_USAGE = (
    f"INSERT INTO engine_usage (engine, hour, {', '.join(_USAGE_KINDS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (engine, hour) DO UPDATE SET "
    + ", ".join(f"{kind} = engine_usage.{kind} + excluded.{kind}" for kind in _USAGE_KINDS)
)
_PERIOD_COLUMNS = "engine, start_at, end_at, prompt_tokens, generation_tokens, cached_tokens, resets"
INSERT_PERIOD = (
    f"INSERT INTO reconcile_periods ({_PERIOD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (engine, end_at) DO NOTHING"
)
# The oldest unsettled period of some engine, due for settlement; an engine's periods settle in
# order, since each takes over the negative residual its predecessor carried.
PICK_PERIOD = (
    f"SELECT {_PERIOD_COLUMNS} FROM reconcile_periods p WHERE p.settled_at IS NULL AND p.end_at <= ? "
    "AND NOT EXISTS (SELECT 1 FROM reconcile_periods q "
    "WHERE q.engine = p.engine AND q.settled_at IS NULL AND q.end_at < p.end_at) "
    "ORDER BY p.end_at LIMIT 1"
)
# Carried across periods of one engine, never across a restart (a reset period carries nothing).
SELECT_CARRY = (
    "SELECT carry_prompt_tokens, carry_generation_tokens FROM reconcile_periods "
    "WHERE engine = ? AND end_at < ? AND settled_at IS NOT NULL ORDER BY end_at DESC LIMIT 1"
)
_PERIOD_ROWS = "FROM usage_ledger WHERE endpoint = ? AND ended_at > ? AND ended_at <= ?"
LEDGER_SUMS = (
    "SELECT COALESCE(SUM(prompt_tokens * choices), 0), COALESCE(SUM(cached_tokens), 0), "
    f"COALESCE(SUM(completion_tokens), 0) {_PERIOD_ROWS} AND outcome != 'adjustment'"
)
_CUT = ", ".join(f"'{outcome.value}'" for outcome in CUT_OUTCOMES)
CUT_ROWS = f"SELECT {USAGE_COLUMNS} {_PERIOD_ROWS} AND outcome IN ({_CUT}) ORDER BY ended_at, request_id"
MARK_SETTLED = (
    "UPDATE reconcile_periods SET settled_at = ?, ledger_prompt_tokens = ?, ledger_generation_tokens = ?, "
    "ledger_cached_tokens = ?, adjusted_prompt_tokens = ?, adjusted_generation_tokens = ?, "
    "carry_prompt_tokens = ?, carry_generation_tokens = ? "
    "WHERE engine = ? AND end_at = ? AND settled_at IS NULL"
)
ENGINE_HOURS = (
    "SELECT engine, hour, prompt_tokens, cached_tokens, generation_tokens, resets FROM engine_usage "
    "WHERE hour >= ? AND hour < ?"
)


def ledger_hours(hour_of_ended_at: str) -> str:
    """Ledger sums per engine, UTC hour (the backend's expression) and adjustment or not."""
    return (
        f"SELECT endpoint, {hour_of_ended_at} AS h, outcome = 'adjustment' AS adj, "
        "SUM(prompt_tokens * choices), SUM(cached_tokens), SUM(completion_tokens) FROM usage_ledger "
        "WHERE ended_at >= ? AND ended_at < ? AND endpoint != '' GROUP BY endpoint, h, adj"
    )


# Tokens left after ledger and adjustments (prompt in the engine's units, plus generation), per
# engine, over settled periods without a restart (a restart loses what it lost; it is reported).
DRIFT = (
    "SELECT engine, SUM(prompt_tokens - ledger_prompt_tokens - adjusted_prompt_tokens "
    "+ generation_tokens - ledger_generation_tokens - adjusted_generation_tokens) FROM reconcile_periods "
    "WHERE settled_at IS NOT NULL AND resets = 0 AND end_at >= ? GROUP BY engine"
)


def cursor_values(cursor: EngineCursor) -> tuple[Any, ...]:
    """``cursor`` in ``_CURSOR_FIELDS`` order."""
    return (
        cursor.engine,
        cursor.incarnation,
        *cursor.counters.values(),
        cursor.sampled_at,
        cursor.quiet_at,
        cursor.open.prompt_tokens,
        cursor.open.generation_tokens,
        cursor.open.cached_tokens,
        cursor.open_resets,
    )


def update_cursor_args(cursor: EngineCursor) -> tuple[Any, ...]:
    engine, *rest = cursor_values(cursor)
    return (*rest, engine)


def cursor_from_row(row: Sequence[Any]) -> EngineCursor:
    counters = EngineCounters(*(int(v) for v in row[2:7]))
    opened = EngineCounters(int(row[9]), int(row[10]), int(row[11]))
    return EngineCursor(row[0], float(row[1]), counters, float(row[7]), row[8], opened, int(row[12]))


def engine_usage_args(step: CounterAdvance) -> tuple[Any, ...] | None:
    """The hour's additions, or None when the reading added nothing."""
    if step.delta == EngineCounters() and not step.reset:
        return None
    delta = step.delta
    return (
        step.cursor.engine,
        step.hour,
        delta.prompt_tokens,
        delta.generation_tokens,
        delta.cached_tokens,
        delta.prefix_hits,
        delta.prefix_queries,
        int(step.reset),
    )


def period_values(period: ClosedPeriod) -> tuple[Any, ...]:
    return (
        period.engine,
        period.start_at,
        period.end_at,
        period.prompt_tokens,
        period.generation_tokens,
        period.cached_tokens,
        period.resets,
    )


def period_from_row(row: Sequence[Any]) -> ClosedPeriod:
    return ClosedPeriod(row[0], float(row[1]), float(row[2]), *(int(v) for v in row[3:7]))


def period_rows_args(period: ClosedPeriod) -> tuple[Any, ...]:
    return (period.engine, period.start_at, period.end_at)


def ledger_tokens(row: Sequence[Any] | None) -> LedgerTokens:
    return LedgerTokens(*(int(v or 0) for v in row)) if row is not None else LedgerTokens()


def mark_settled_args(settled: SettledPeriod, settled_at: float) -> tuple[Any, ...]:
    period, ledger, settlement = settled.period, settled.ledger, settled.settlement
    return (
        settled_at,
        ledger.prompt_tokens,
        ledger.completion_tokens,
        ledger.cached_tokens,
        settlement.adjusted_prompt_tokens,
        settlement.adjusted_generation_tokens,
        settlement.carry_prompt_tokens,
        settlement.carry_generation_tokens,
        period.engine,
        period.end_at,
    )


def reconcile_hours(
    engine_rows: Sequence[Sequence[Any]], ledger_rows: Sequence[Sequence[Any]]
) -> list[ReconcileHour]:
    """Engine and ledger sums side by side, per engine and hour, ordered."""
    hours: dict[tuple[str, float], ReconcileHour] = {}
    for engine, hour, prompt, cached, generation, resets in engine_rows:
        key = (str(engine), float(hour))
        hours[key] = ReconcileHour(*key, int(prompt), int(cached), int(generation), int(resets))
    for engine, hour, adjustment, *sums in ledger_rows:
        key = (str(engine), float(hour))
        line = hours.get(key) or ReconcileHour(*key)
        tokens = ledger_tokens(sums)
        if adjustment:
            hours[key] = dataclasses.replace(line, adjusted=tokens)
        else:
            hours[key] = dataclasses.replace(line, ledger=tokens)
    return [hours[key] for key in sorted(hours)]
