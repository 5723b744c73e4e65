"""Each token an engine counts, added to the store exactly once, however many replicas read it.

Every gateway replica reads every engine's counters, and any of them may persist a reading
(``EngineSample``). The store keeps one cursor per engine, the last reading it counted, and moves
it forward in one transaction that holds the cursor's row (``advance`` is that step, pure):

- a reading older than the cursor (a lower incarnation, or lower counters read no later than
  ``RESTART_MARGIN_S`` after the cursor's) is ignored: its tokens were counted already;
- otherwise the difference to the cursor is added: to the (engine, hour) totals and to what the
  engine has counted since its last quiet point. A higher incarnation, or lower counters read
  well after the cursor's, is a restart: the new process counts from zero, so its counters are the
  difference (what the old one counted after the cursor's reading is lost with it, and flagged);
- a quiet reading (nothing running or waiting) closes a period [last quiet point, reading] with
  what was counted since, when anything was. Periods follow one another without a gap, so the
  ledger rows of an engine fall into exactly one of them (``gateway/reconcile`` settles them).

Because the cursor only moves forward and every difference is taken against it under its lock,
the sum of the differences equals the counters' growth, once, whatever the order of readings.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.records import EngineCounters, EngineSample

# Lower counters with the same incarnation: a restart only when read this long after the cursor's
# reading (a replica whose scrape or write was slow delivers an older reading a little later).
RESTART_MARGIN_S = 5.0
HOUR_S = 3600.0


def hour_of(at: float) -> float:
    """Epoch seconds at the start of the UTC hour of ``at``."""
    return (at // HOUR_S) * HOUR_S


@dataclass(frozen=True, slots=True)
class EngineCursor:
    """An engine's row in ``engine_counters``."""

    engine: str
    incarnation: float
    counters: EngineCounters
    sampled_at: float
    quiet_at: float | None  # the last quiet point (None: none seen yet)
    open: EngineCounters  # counted since ``quiet_at`` (prompt, generation and cached tokens)
    open_resets: int = 0  # restarts since ``quiet_at``

    @classmethod
    def first(cls, sample: EngineSample) -> EngineCursor:
        """The baseline: what the engine counted before its first reading is nobody's to settle."""
        quiet_at = sample.at if sample.quiet else None
        return cls(sample.engine, sample.incarnation, sample.counters, sample.at, quiet_at, EngineCounters())


@dataclass(frozen=True, slots=True)
class ClosedPeriod:
    """What an engine counted between two quiet points (a ``reconcile_periods`` row)."""

    engine: str
    start_at: float
    end_at: float
    prompt_tokens: int
    generation_tokens: int
    cached_tokens: int
    resets: int


@dataclass(frozen=True, slots=True)
class CounterAdvance:
    """What one reading adds: the new cursor, the hour's difference and maybe a closed period."""

    cursor: EngineCursor
    hour: float
    delta: EngineCounters
    reset: bool
    period: ClosedPeriod | None


def _is_restart(cursor: EngineCursor, sample: EngineSample, margin_s: float) -> bool | None:
    """True for a restart, False for a later reading of the same process, None for a stale one."""
    if sample.incarnation != cursor.incarnation:
        return True if sample.incarnation > cursor.incarnation else None
    if not sample.counters.any_below(cursor.counters):
        return False
    return True if sample.at > cursor.sampled_at + margin_s else None


def advance(
    cursor: EngineCursor, sample: EngineSample, margin_s: float = RESTART_MARGIN_S
) -> CounterAdvance | None:
    """The step from ``cursor`` with ``sample`` (None: the sample is stale, nothing changes)."""
    restart = _is_restart(cursor, sample, margin_s)
    if restart is None:
        return None
    delta = sample.counters if restart else sample.counters.minus(cursor.counters)
    tokens = EngineCounters(delta.prompt_tokens, delta.generation_tokens, delta.cached_tokens)
    opened = cursor.open.plus(tokens)
    resets = cursor.open_resets + int(restart)
    quiet_at, period = cursor.quiet_at, None
    if sample.quiet and (quiet_at is None or sample.at > quiet_at):
        if quiet_at is not None and (opened != EngineCounters() or resets):
            period = ClosedPeriod(
                sample.engine,
                quiet_at,
                sample.at,
                opened.prompt_tokens,
                opened.generation_tokens,
                opened.cached_tokens,
                resets,
            )
        if quiet_at is None or period is not None:
            # A new quiet point. One with nothing counted since the last is skipped, so that the
            # next period starts where the last ended and no ledger row falls between two.
            quiet_at, opened, resets = sample.at, EngineCounters(), 0
    moved = EngineCursor(
        cursor.engine,
        sample.incarnation,
        sample.counters,
        max(cursor.sampled_at, sample.at),
        quiet_at,
        opened,
        resets,
    )
    return CounterAdvance(moved, hour_of(sample.at), delta, restart, period)
