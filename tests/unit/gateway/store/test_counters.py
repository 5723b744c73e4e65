"""The cursor step: every token an engine counts is added once, whatever order readings come in."""

from __future__ import annotations

import random

from gateway.records import EngineCounters, EngineSample
from gateway.store.counters import RESTART_MARGIN_S, ClosedPeriod, EngineCursor, advance, hour_of

ENGINE = "http://e:1"
T0 = 1_800_000_000.0  # a whole hour


def reading(
    at: float, prompt: int, generation: int, *, quiet: bool = False, incarnation: float = 1.0
) -> EngineSample:
    return EngineSample(ENGINE, at, incarnation, EngineCounters(prompt, generation, prompt // 2), quiet)


def step_all(samples: list[EngineSample]) -> tuple[EngineCursor, EngineCounters, list[ClosedPeriod], int]:
    """Feed readings in order; the cursor, the hour totals' sum, the periods and the resets."""
    cursor = EngineCursor.first(samples[0])
    total, periods, resets = EngineCounters(), [], 0
    for sample in samples[1:]:
        step = advance(cursor, sample)
        if step is None:
            continue
        cursor, total = step.cursor, total.plus(step.delta)
        resets += step.reset
        periods += [step.period] if step.period else []
    return cursor, total, periods, resets


def test_the_first_reading_is_the_baseline() -> None:
    cursor = EngineCursor.first(reading(T0, 100, 50, quiet=True))
    assert (cursor.counters.prompt_tokens, cursor.quiet_at, cursor.open) == (100, T0, EngineCounters())
    assert EngineCursor.first(reading(T0, 100, 50)).quiet_at is None


def test_differences_add_up_to_the_counters_growth_and_quiet_points_close_periods() -> None:
    cursor, total, periods, resets = step_all(
        [
            reading(T0, 100, 50, quiet=True),
            reading(T0 + 1, 130, 60),
            reading(T0 + 2, 160, 90, quiet=True),
            reading(T0 + 3, 160, 90, quiet=True),  # nothing counted since: no empty period
            reading(T0 + 4, 170, 95, quiet=True),
        ]
    )
    assert (total.prompt_tokens, total.generation_tokens, total.cached_tokens, resets) == (70, 45, 35, 0)
    assert periods == [
        ClosedPeriod(ENGINE, T0, T0 + 2, 60, 40, 30, 0),
        ClosedPeriod(ENGINE, T0 + 2, T0 + 4, 10, 5, 5, 0),  # starts where the last one ended
    ]
    assert cursor.quiet_at == T0 + 4 and cursor.open == EngineCounters()


def test_a_stale_reading_is_ignored() -> None:
    cursor = EngineCursor.first(reading(T0, 100, 50))
    cursor = advance(cursor, reading(T0 + 2, 120, 60)).cursor  # type: ignore[union-attr]
    assert advance(cursor, reading(T0 + 1, 110, 55)) is None  # a slower replica's older reading
    assert advance(cursor, reading(T0 + 3, 200, 90, incarnation=0.5)) is None  # an older process
    same = advance(cursor, reading(T0 + 1, 120, 60))
    assert same is not None and same.delta == EngineCounters() and same.cursor.sampled_at == T0 + 2


def test_a_new_incarnation_counts_from_zero_and_flags_the_period() -> None:
    cursor, total, periods, resets = step_all(
        [
            reading(T0, 100, 50, quiet=True),
            reading(T0 + 1, 130, 60),
            reading(T0 + 9, 20, 4, incarnation=2.0),  # restarted: what it counted after T0+1 is lost
            reading(T0 + 10, 30, 8, quiet=True, incarnation=2.0),
        ]
    )
    assert (total.prompt_tokens, total.generation_tokens, resets) == (30 + 30, 10 + 8, 1)
    assert periods == [ClosedPeriod(ENGINE, T0, T0 + 10, 60, 18, 30, 1)]
    assert cursor.incarnation == 2.0


def test_lower_counters_long_after_the_cursor_are_a_restart_without_an_incarnation() -> None:
    cursor = EngineCursor.first(reading(T0, 100, 50, incarnation=0))
    assert advance(cursor, reading(T0 + RESTART_MARGIN_S, 10, 5, incarnation=0)) is None
    step = advance(cursor, reading(T0 + RESTART_MARGIN_S + 1, 10, 5, incarnation=0))
    assert step is not None and step.reset and step.delta.prompt_tokens == 10


def test_the_hour_is_the_readings() -> None:
    cursor = EngineCursor.first(reading(T0 + 3599, 0, 0))
    step = advance(cursor, reading(T0 + 3601, 5, 5))
    assert step is not None and step.hour == hour_of(T0 + 3601) == T0 + 3600


def test_any_order_of_two_replicas_readings_counts_each_token_once() -> None:
    """Two replicas read the same counters at their own moments; the store sees the readings in
    any order. The counted total is always the growth between the first and the latest reading."""
    rng = random.Random(7)
    truth = [(T0 + i, 10 * i, 3 * i) for i in range(40)]
    for _ in range(50):
        replica_a = [reading(at, p, g) for at, p, g in truth if rng.random() < 0.6]
        replica_b = [reading(at, p, g) for at, p, g in truth if rng.random() < 0.6]
        arrivals = sorted(replica_a + replica_b, key=lambda s: s.at + rng.uniform(0, 3))
        cursor, total, _, resets = step_all([reading(T0 - 1, 0, 0), *arrivals])
        assert resets == 0
        assert total.prompt_tokens == cursor.counters.prompt_tokens
        assert cursor.counters.prompt_tokens == max(s.counters.prompt_tokens for s in arrivals)
