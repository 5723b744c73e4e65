"""The supervisor: crashed rounds are logged, counted and restarted with backoff; critical tasks
report down until they recover; shutdown cancels everything. On a fake clock whose sleeps pass at
once: nothing here waits for real time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from gateway.metrics import GatewayMetrics
from gateway.supervisor import Backoff, Round, Supervisor
from tests.support.clock import FakeClock


class Flaky:
    """A round that fails its first ``failures`` calls, then succeeds until ``park_after`` calls,
    then waits on ``gate`` (so the loop stops spinning on the fake clock's instant sleeps)."""

    def __init__(self, failures: int, park_after: int, before_failing: Callable[[], None] = lambda: None):
        self.failures = failures
        self.park_after = park_after
        self.before_failing = before_failing
        self.calls = 0
        self.gate = asyncio.Event()
        self.parked = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            self.before_failing()
            raise RuntimeError(f"boom #{self.calls}")
        if self.calls > self.park_after:
            self.parked.set()
            await self.gate.wait()
            self.gate.clear()


def supervisor(clock: FakeClock, metrics: GatewayMetrics | None = None) -> Supervisor:
    backoff = Backoff(initial_s=0.1, max_s=1.0, healthy_after_s=60.0)
    return Supervisor(metrics or GatewayMetrics(), backoff=backoff, clock=clock, sleep=clock.sleep)


async def test_a_crashing_round_is_logged_counted_and_restarted_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, metrics = FakeClock(), GatewayMetrics()
    flaky = Flaky(failures=6, park_after=7)
    caplog.set_level(logging.ERROR, logger="gateway.supervisor")
    async with supervisor(clock, metrics) as tasks:
        tasks.add("ledger", flaky, interval_s=0.25)
        await asyncio.wait_for(flaky.parked.wait(), 1)
    # Doubling from 0.1 s, capped at 1 s; after the first good round, the interval.
    assert clock.slept == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.25]
    assert flaky.calls == 8
    text = metrics.render().decode()
    assert 'gateway_background_task_restarts_total{task="ledger"} 6.0\n' in text
    crashes = [r for r in caplog.records if r.name == "gateway.supervisor"]
    assert [r.getMessage() for r in crashes[:2]] == [
        "background task ledger crashed; restarting it in 0.1 s",
        "background task ledger crashed; restarting it in 0.2 s",
    ]
    assert all(r.exc_info is not None and str(r.exc_info[1]).startswith("boom") for r in crashes)
    assert len(crashes) == 6 and "Traceback" in caplog.text and "RuntimeError: boom #6" in caplog.text


async def test_the_backoff_starts_over_after_a_healthy_run() -> None:
    clock = FakeClock()
    # Crashes 1 and 2 come at once; crash 3 after the task ran for a minute, crash 4 at once again.
    ran_long = iter([False, False, True, False])
    flaky = Flaky(failures=4, park_after=4, before_failing=lambda: clock.advance(60 if next(ran_long) else 0))
    async with supervisor(clock) as tasks:
        tasks.add("health", flaky, interval_s=2.0, critical=True)
        await asyncio.wait_for(flaky.parked.wait(), 1)
    assert clock.slept == [0.1, 0.2, 0.1, 0.2]
    assert Backoff().delay(0.0, 0.0) == 0.1 and Backoff().delay(16.0, 1.0) == 30.0


async def test_a_critical_task_is_down_from_its_crash_until_a_round_succeeds() -> None:
    clock = FakeClock()
    critical, optional = Flaky(failures=1, park_after=0), Flaky(failures=1, park_after=0)
    async with supervisor(clock) as tasks:
        tasks.add("health", critical, interval_s=2.0, critical=True)
        tasks.add("budgets", optional, interval_s=15.0)
        await asyncio.wait_for(critical.parked.wait(), 1)  # restarted; its round has not finished
        await asyncio.wait_for(optional.parked.wait(), 1)
        assert tasks.critical_down() == ["health"]  # a non-critical task never makes the gateway down
        critical.gate.set()  # the round succeeds
        while critical.calls < 3:
            await asyncio.sleep(0)
        assert tasks.critical_down() == []


async def test_wait_first_waits_one_interval_before_the_first_round() -> None:
    clock = FakeClock()
    round_ = Flaky(failures=0, park_after=0)
    async with supervisor(clock) as tasks:
        tasks.add("drains", round_, interval_s=2.0, wait_first=True)
        await asyncio.wait_for(round_.parked.wait(), 1)
        with pytest.raises(ValueError, match="supervised already"):
            tasks.add("drains", round_, interval_s=2.0)
    assert clock.slept == [2.0]


async def test_shutdown_cancels_every_task_and_waits_for_it() -> None:
    clock = FakeClock()
    cancelled: list[str] = []

    def forever(name: str) -> Round:
        async def round_() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return round_

    tasks = supervisor(clock)
    tasks.add("ledger", forever("ledger"), interval_s=0.0, critical=True)
    async with tasks:
        tasks.add("engine-stats", forever("engine-stats"), interval_s=1.0)  # added while running
        for _ in range(3):
            await asyncio.sleep(0)
        runners = [t for t in asyncio.all_tasks() if t.get_name().startswith("supervised:")]
        assert sorted(t.get_name() for t in runners) == ["supervised:engine-stats", "supervised:ledger"]
    assert all(t.done() for t in runners)
    assert sorted(cancelled) == ["engine-stats", "ledger"]
    assert tasks.critical_down() == []
