"""Which readings of an engine's counters to persist.

The engine-stats scraper hands every reading (one a second per engine) to ``EngineSampler.observe``,
which keeps a reading when it marks a quiet point, or when the counters moved and the last kept one
is ``interval_s`` old; the ``reconcile-samples`` background round writes the kept readings.

A quiet point needs two readings in a row with nothing running or waiting and the same counters:
every request the engine counted before it had then ended a whole scrape interval earlier, so the
gateway has recorded it too (its ledger row's ``ended_at`` is before the quiet point), and nothing
was counted since. Dropping a reading (the queue is bounded while the store is down) loses no token,
since counters are cumulative; it only makes a period longer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from gateway.clock import Clock, wall
from gateway.records import EngineCounters, EngineSample
from gateway.routing.engine_stats import EngineStats
from gateway.store.counters import CounterAdvance

MAX_PENDING = 10_000


class SampleSink(Protocol):
    async def record_engine_sample(self, sample: EngineSample) -> CounterAdvance | None: ...


@dataclass(slots=True)
class _Engine:
    """What this replica last read from, and last kept of, one engine."""

    read: tuple[float, EngineCounters, bool] | None = None  # incarnation, counters, idle
    kept: tuple[float, EngineCounters] | None = None
    kept_quiet: bool = False
    kept_at: float = 0.0


class EngineSampler:
    """Chooses readings to persist (``observe``) and persists them in order (``flush``)."""

    def __init__(self, sink: SampleSink, interval_s: float, clock: Clock = wall) -> None:
        self._sink = sink
        self._interval_s = interval_s
        self._clock = clock  # wall time: readings are compared with ledger rows' ``ended_at``
        self._engines: dict[str, _Engine] = {}
        self._pending: deque[EngineSample] = deque(maxlen=MAX_PENDING)

    @property
    def pending(self) -> list[EngineSample]:
        return list(self._pending)

    def observe(self, engine: str, stats: EngineStats) -> None:
        """One reading of ``engine`` (an ``EngineStatsScraper`` listener)."""
        if stats.counters is None:
            return
        now = self._clock()
        state = self._engines.setdefault(engine, _Engine())
        idle = stats.running == 0 and stats.waiting == 0
        reading = (stats.incarnation, stats.counters)
        quiet = idle and state.read == (*reading, True)
        state.read = (*reading, idle)
        changed = reading != state.kept
        due = now - state.kept_at >= self._interval_s
        if (quiet and (changed or not state.kept_quiet)) or (changed and (due or state.kept is None)):
            self._pending.append(EngineSample(engine, now, stats.incarnation, stats.counters, quiet))
            state.kept, state.kept_quiet, state.kept_at = reading, quiet, now

    async def flush(self) -> None:
        """Write the kept readings, oldest first; one that fails stays for the next round."""
        while self._pending:
            await self._sink.record_engine_sample(self._pending[0])
            self._pending.popleft()
