"""Which readings the sampler keeps, and the settlement round against a recording store."""

from __future__ import annotations

from gateway.metrics import GatewayMetrics
from gateway.reconcile.sampler import EngineSampler
from gateway.reconcile.settler import Settler
from gateway.records import EngineCounters, EngineSample, Outcome, UsageRecord
from gateway.routing.engine_stats import EngineStats
from gateway.store.counters import ClosedPeriod, CounterAdvance
from gateway.store.settlement import LedgerTokens, PeriodToSettle, SettledPeriod, SettlementPlan
from tests.support.clock import FakeClock
from tests.support.metrics import sample

ENGINE = "http://e:1"


def stats(
    prompt: int, generation: int, running: int = 0, waiting: int = 0, incarnation: float = 1.0
) -> EngineStats:
    counters = EngineCounters(prompt, generation)
    return EngineStats(running, waiting, 0.0, counters, incarnation)


class Sink:
    def __init__(self) -> None:
        self.samples: list[EngineSample] = []

    async def record_engine_sample(self, sample: EngineSample) -> CounterAdvance | None:
        self.samples.append(sample)
        return None


def kept(sampler: EngineSampler) -> list[tuple[float, int, bool]]:
    return [(s.at, s.counters.prompt_tokens, s.quiet) for s in sampler.pending]


def test_keeps_the_first_reading_then_quiet_points_and_moving_counters_every_interval() -> None:
    clock = FakeClock(100.0)
    sampler = EngineSampler(Sink(), interval_s=10, clock=clock)
    readings = [
        stats(0, 0),  # 100: the first (the baseline)
        stats(5, 1, running=1),  # 101: moving, but the last kept one is 1 s old
        stats(9, 4, running=1),  # 102
        stats(9, 4),  # 103: idle, but the previous reading was not: not a quiet point yet
        stats(9, 4),  # 104: idle twice with the same counters: a quiet point
        stats(9, 4),  # 105: nothing new
        stats(20, 9, running=2),  # 106
        stats(40, 19, waiting=1),  # 107 ... 116: kept once 10 s have passed
    ]
    for reading in readings:
        sampler.observe(ENGINE, reading)
        clock.advance(1)
    for prompt in range(41, 51):
        sampler.observe(ENGINE, stats(prompt, 20, running=1))
        clock.advance(1)
    assert kept(sampler) == [(100, 0, False), (104, 9, True), (114, 47, False)]


def test_a_quiet_point_after_a_kept_busy_reading_with_the_same_counters_is_kept() -> None:
    clock = FakeClock(100.0)
    sampler = EngineSampler(Sink(), interval_s=1, clock=clock)
    for reading in (stats(0, 0), stats(5, 5, running=1), stats(5, 5), stats(5, 5)):
        sampler.observe(ENGINE, reading)
        clock.advance(1)
    assert kept(sampler) == [(100, 0, False), (101, 5, False), (103, 5, True)]


def test_a_page_without_counters_and_a_restart() -> None:
    clock = FakeClock(100.0)
    sampler = EngineSampler(Sink(), interval_s=10, clock=clock)
    sampler.observe(ENGINE, EngineStats(0, 0, 0.0, None))
    assert kept(sampler) == []
    sampler.observe(ENGINE, stats(50, 5))
    clock.advance(1)
    sampler.observe(ENGINE, stats(3, 1, running=1, incarnation=2.0))  # moving; not due yet
    clock.advance(10)
    sampler.observe(ENGINE, stats(4, 2, running=1, incarnation=2.0))
    assert [(s.incarnation, s.counters.prompt_tokens) for s in sampler.pending] == [(1.0, 50), (2.0, 4)]


async def test_flush_writes_in_order_and_keeps_what_failed() -> None:
    class Failing(Sink):
        async def record_engine_sample(self, sample: EngineSample) -> CounterAdvance | None:
            if len(self.samples) == 1:
                self.samples.append(sample)
                raise OSError("database down")
            return await super().record_engine_sample(sample)

    sink, clock = Failing(), FakeClock(100.0)
    sampler = EngineSampler(sink, interval_s=1, clock=clock)
    for prompt in (1, 2, 3):
        sampler.observe(ENGINE, stats(prompt, 0, running=1))
        clock.advance(1)
    try:
        await sampler.flush()
    except OSError:
        pass
    assert [s.counters.prompt_tokens for s in sampler.pending] == [2, 3]
    await sampler.flush()
    assert [s.counters.prompt_tokens for s in sink.samples] == [1, 2, 2, 3] and sampler.pending == []


class SettlingStore:
    """Hands out one period (with one cut row) and records what the settler asked."""

    def __init__(self, todo: PeriodToSettle) -> None:
        self.todo: PeriodToSettle | None = todo
        self.due_before: list[float] = []

    async def settle_next_period(
        self, due_before: float, settled_at: float, plan: SettlementPlan
    ) -> SettledPeriod | None:
        self.due_before.append(due_before)
        if self.todo is None:
            return None
        todo, self.todo = self.todo, None
        return SettledPeriod(todo.period, todo.ledger, plan(todo))

    async def metering_drift(self, since: float) -> dict[str, int]:
        return {ENGINE: -3} if self.todo is None else {}


async def test_the_settlement_round_prices_adjustments_and_publishes_metrics() -> None:
    row = UsageRecord(
        "req_a", "ten", "key", "m", "completions", 10.0, ENGINE, Outcome.aborted, 499, 0, 0, ended_at=11.0
    )
    todo = PeriodToSettle(ClosedPeriod(ENGINE, 0.0, 20.0, 7, 4, 0, 0), LedgerTokens(), [row])
    store, metrics, clock = SettlingStore(todo), GatewayMetrics(), FakeClock(1000.0)
    price = lambda r: setattr(r, "cost_pico", 42)  # noqa: E731
    settler = Settler(store, price, metrics, settle_after_s=60, clock=clock)  # type: ignore[arg-type]
    await settler.settle_round()
    assert store.due_before == [940.0, 940.0]
    text = metrics.render().decode()
    assert sample(text, "gateway_metering_adjusted_tokens_total", kind="prompt") == 7
    assert sample(text, "gateway_metering_adjusted_tokens_total", kind="completion") == 4
    assert sample(text, "gateway_metering_drift_tokens", engine=ENGINE) == -3
