"""Reconciliation on real databases: two store instances stand for two gateway replicas sharing
one SQLite file or one PostgreSQL schema."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.reconcile.allocation import plan_settlement
from gateway.records import EngineCounters, EngineSample, Outcome, UsageRecord
from gateway.store import Store
from gateway.store.postgres import PostgresStore
from gateway.store.settlement import PeriodToSettle, SettledPeriod, Settlement
from gateway.store.sqlite import SqliteStore
from tests.support.postgres import require_postgres, temporary_schema

ENGINE = "http://engine:8001"
T0 = 1_800_000_000.0  # 00:00 UTC
HOUR = 3600.0


@pytest.fixture(params=["sqlite", "postgres"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    async def opened(*stores: Store) -> AsyncIterator[tuple[Store, Store]]:
        for store in stores:
            await store.open()
        try:
            yield stores[0], stores[1]
        finally:
            for store in stores:
                await store.close()

    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        async for pair in opened(SqliteStore(path), SqliteStore(path)):
            yield pair
        return
    require_postgres()
    async with temporary_schema() as url:
        async for pair in opened(PostgresStore(url), PostgresStore(url)):
            yield pair


def reading(
    at: float, prompt: int, generation: int, quiet: bool = False, incarnation: float = 1.0
) -> EngineSample:
    return EngineSample(ENGINE, at, incarnation, EngineCounters(prompt, generation, prompt // 4), quiet)


def row(request_id: str, ended_at: float, prompt: int, completion: int, **fields: object) -> UsageRecord:
    values: dict[str, object] = {"endpoint": ENGINE, "ended_at": ended_at, "outcome": Outcome.ok}
    values.update(fields)
    return UsageRecord(
        request_id,
        "ten_1",
        "key_1",
        "m",
        "chat.completions",
        ended_at - 1,
        prompt_tokens=prompt,
        completion_tokens=completion,
        **values,  # type: ignore[arg-type]
    )


async def test_two_replicas_interleaved_and_stale_readings_count_each_token_once(
    replicas: tuple[Store, Store],
) -> None:
    """The engine's true counters grow across two hours; each replica reads them at its own
    moments, and their writes reach the store concurrently and out of order. The hour totals add
    up to the growth exactly once, and the quiet points close the same periods."""
    a, b = replicas
    truth = [(T0 + 60 * i, 100 * i, 40 * i) for i in range(120)]  # two hours
    rng = random.Random(11)
    quiet_minutes = {30, 31, 90, 91}
    readings = {
        store: [
            reading(at, p, g, quiet=i in quiet_minutes)
            for i, (at, p, g) in enumerate(truth)
            if i == 0 or rng.random() < 0.7 or i in quiet_minutes
        ]
        for store in (a, b)
    }
    for store in (a, b):  # each replica delivers late now and then: some readings swap places
        mine = readings[store]
        for i in range(1, len(mine) - 1, 7):
            mine[i], mine[i + 1] = mine[i + 1], mine[i]

    async def deliver(store: Store) -> None:
        for sample in readings[store]:
            await store.record_engine_sample(sample)

    await asyncio.gather(deliver(a), deliver(b))
    hours = await a.reconcile_hours(T0, T0 + 2 * HOUR)
    first = min(s.counters.prompt_tokens for s in [*readings[a][:1], *readings[b][:1]])
    last = max(s.counters.prompt_tokens for s in [*readings[a], *readings[b]])
    assert sum(h.engine_prompt_tokens for h in hours) == last - first == 100 * 119
    assert sum(h.engine_generation_tokens for h in hours) == 40 * 119
    assert sum(h.resets for h in hours) == 0
    assert [h.hour for h in hours] == [T0, T0 + HOUR]
    assert await b.reconcile_hours(T0, T0 + 2 * HOUR) == hours
    periods = []
    while (settled := await b.settle_next_period(T0 + 2 * HOUR, T0 + 2 * HOUR, unpriced)) is not None:
        periods.append(settled.period)
    assert len(periods) >= 2 and all(p.resets == 0 for p in periods)
    assert all(later.start_at == earlier.end_at for earlier, later in zip(periods, periods[1:], strict=False))
    start, end = periods[0].start_at, periods[-1].end_at  # quiet points: the counters at minute i
    assert sum(p.prompt_tokens for p in periods) == 100 * (end - start) / 60


async def test_two_settlers_racing_on_one_period_write_its_adjustments_once(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    for sample in (
        reading(T0, 0, 0, quiet=True),
        reading(T0 + 50, 250, 90),
        reading(T0 + 60, 250, 90, quiet=True),
    ):
        await a.record_engine_sample(sample)
    await a.insert_usage(
        [
            row("req_ok", T0 + 10, 100, 50),
            row("req_cut", T0 + 20, 0, 0, outcome=Outcome.aborted, http_status=499),  # non-streamed, cut
            row("req_stream", T0 + 30, 50, 30, outcome=Outcome.aborted, http_status=499),  # a tail lost
            row("req_later", T0 + 61, 999, 999),  # after the quiet point: the next period's
        ]
    )
    calls: list[str] = []

    def plan(name: str) -> object:
        def run(todo: PeriodToSettle) -> Settlement:
            calls.append(name)
            return plan_settlement(
                todo, price=lambda r: setattr(r, "cost_pico", r.prompt_tokens + r.completion_tokens)
            )

        return run

    results = await asyncio.gather(
        *(s.settle_next_period(T0 + 100, T0 + 200, plan(n)) for s, n in ((a, "a"), (b, "b")))
    )  # type: ignore[arg-type]
    settled = [r for r in results if r is not None]
    assert len(settled) == 1 and len(calls) == 1
    assert await a.settle_next_period(T0 + 100, T0 + 200, plan("again")) is None  # type: ignore[arg-type]
    adjustments = sorted(
        (r for r in await a.list_usage() if r.outcome == Outcome.adjustment), key=lambda r: r.request_id
    )
    # engine 250/90 vs ledger 150/80: prompt 100 to the row that got no usage, completion 10 shared
    assert [
        (r.request_id, r.adjusts, r.prompt_tokens, r.completion_tokens, r.cost_pico) for r in adjustments
    ] == [
        ("adj_req_cut", "req_cut", 100, 5, 105),
        ("adj_req_stream", "req_stream", 0, 5, 5),
    ]
    [hour] = await a.reconcile_hours(T0, T0 + HOUR)
    assert (hour.engine_prompt_tokens, hour.ledger.prompt_tokens, hour.adjusted.prompt_tokens) == (
        250,
        150 + 999,
        100,
    )
    assert (
        hour.engine_generation_tokens,
        hour.ledger.completion_tokens,
        hour.adjusted.completion_tokens,
    ) == (90, 80 + 999, 10)
    assert await b.metering_drift(T0) == {ENGINE: 0}


def unpriced(todo: PeriodToSettle) -> Settlement:
    return plan_settlement(todo, price=lambda row: None)


async def test_a_negative_residual_is_carried_to_the_next_period_and_a_restart_is_adjusted_too(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    readings = [
        reading(T0, 0, 0, quiet=True),
        reading(T0 + 10, 100, 10, quiet=True),  # period 1: the ledger holds 3 more completion tokens
        reading(T0 + 20, 200, 30, quiet=True),  # period 2: 4 more than the ledger: 3 are netted
        reading(T0 + 30, 5, 5, incarnation=2.0),  # a restart
        reading(T0 + 40, 50, 20, quiet=True, incarnation=2.0),  # period 3: the new process's 50/20
    ]
    for sample in readings:
        await b.record_engine_sample(sample)
    await a.insert_usage(
        [
            row("req_1", T0 + 5, 100, 13),
            row("req_2", T0 + 15, 100, 15),
            row("req_3", T0 + 16, 0, 0, outcome=Outcome.interrupted, http_status=502),
            row("req_4", T0 + 35, 0, 0, outcome=Outcome.aborted, http_status=499),
        ]
    )

    async def settle(store: Store) -> SettledPeriod | None:
        return await store.settle_next_period(T0 + 100, T0 + 200, unpriced)

    done = [await settle(a), await settle(b), await settle(a), await settle(b)]
    assert [d.period.end_at if d else None for d in done] == [T0 + 10, T0 + 20, T0 + 40, None]
    assert [d.settlement.carry_generation_tokens for d in done if d] == [-3, 0, 0]
    adjustments = [r for r in await a.list_usage() if r.outcome == Outcome.adjustment]
    assert [(r.request_id, r.prompt_tokens, r.completion_tokens) for r in adjustments] == [
        ("adj_req_3", 0, 2),
        ("adj_req_4", 50, 20),  # what the restarted engine counted and nobody billed
    ]
    # Drift over periods without a restart: -3 then +2 (5 minus the 3 carried): engine = ledger + adjustments
    assert await a.metering_drift(T0) == {ENGINE: 0}
    [hour] = await a.reconcile_hours(T0, T0 + HOUR)
    assert hour.resets == 1
