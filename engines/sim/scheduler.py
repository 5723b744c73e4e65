"""Admission like vLLM's scheduler: up to ``max_num_seqs`` requests run, the rest wait in order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from engines.sim.metrics import ModelStats


class Scheduler:
    """Counts running and waiting requests (per model, for the gauges) and admits them FIFO."""

    def __init__(self, limit: Callable[[], int]) -> None:
        # A callable so that a runtime change of ``max_num_seqs`` applies to the next admission.
        self._limit = limit
        self._running = 0
        self._waiters: deque[tuple[asyncio.Future[None], ModelStats]] = deque()

    @property
    def running(self) -> int:
        return self._running

    async def admit(self, stats: ModelStats) -> None:
        """Return once the request holds a running slot; the caller must ``release`` it."""
        if not self._waiters and self._running < self._limit():
            self._running += 1
            stats.running += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, stats))
        stats.waiting += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                stats.waiting -= 1
                if (future, stats) in self._waiters:
                    self._waiters.remove((future, stats))
            else:
                self.release(stats)  # admitted and cancelled in the same tick: hand the slot on
            raise

    def release(self, stats: ModelStats) -> None:
        """Give the slot back and admit waiters while there is room."""
        self._running -= 1
        stats.running -= 1
        self.admit_waiting()

    def admit_waiting(self) -> None:
        """Admit waiters in arrival order while there is room (also after the limit is raised)."""
        while self._waiters and self._running < self._limit():
            future, waiter_stats = self._waiters.popleft()
            if future.cancelled():
                continue  # its owner undoes its own waiting count
            waiter_stats.waiting -= 1
            waiter_stats.running += 1
            self._running += 1
            future.set_result(None)
