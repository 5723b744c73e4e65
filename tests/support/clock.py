"""A clock for tests: time moves only when the test (or a fake sleep) says so."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Seconds that move only when told: pass it as a ``gateway.clock.Clock``, and ``sleep`` as a
    ``gateway.clock.Sleep`` to have waits pass at once (each recorded in ``slept``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # other tasks run, as they would while a real sleep waits
