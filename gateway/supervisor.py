"""One supervisor for every background loop, so that none can die silently.

Each loop is written as one round (``HealthChecker.check_round``, ``LedgerWriter.flush_when_due``,
…) that the supervisor calls every ``interval_s``. A round that raises is logged with its
traceback, counted in ``gateway_background_task_restarts_total{task}`` and restarted after a
backoff (``Backoff``: 0.1 s doubling up to 30 s, back to 0.1 s once a run lasted a minute), like
Erlang's supervisors and Kubernetes' crash-loop backoff. A task declared critical (the ledger
writer, the health checks) is *down* from its crash until a round succeeds again, and
``/health?scope=gateway`` answers 503 meanwhile, so a broken replica leaves its Service instead
of serving without a ledger or without health checks.

    supervisor = Supervisor(metrics)
    supervisor.add("health", health.check_round, interval_s=2.0, critical=True)
    async with supervisor:  # starts every task; cancels them all on the way out
        ...
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from gateway.clock import Clock, Sleep, monotonic
from gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

Round = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a crashed task waits for its restart."""

    initial_s: float = 0.1
    max_s: float = 30.0
    healthy_after_s: float = 60.0  # a run this long before its crash starts the doubling over

    def delay(self, previous_s: float, ran_s: float) -> float:
        """The wait after a crash, given the previous wait (0: none yet) and how long it ran."""
        if previous_s <= 0 or ran_s >= self.healthy_after_s:
            return self.initial_s
        return min(previous_s * 2, self.max_s)


@dataclass(eq=False, slots=True)
class _Task:
    name: str
    round: Round
    interval_s: float
    critical: bool
    wait_first: bool
    down: bool = False  # crashed, and no round has succeeded since
    runner: asyncio.Task[None] | None = None


class Supervisor:
    """Runs background rounds forever, restarting crashed ones; see the module docstring."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        backoff: Backoff | None = None,
        clock: Clock = monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self._tasks: dict[str, _Task] = {}
        self._running = False

    def add(
        self,
        name: str,
        round: Round,
        interval_s: float,
        *,
        critical: bool = False,
        wait_first: bool = False,
    ) -> None:
        """Supervise ``round``, run every ``interval_s`` (0: the round paces itself). ``name`` is
        the metric's label; ``wait_first`` when the caller has just run a first round itself."""
        if name in self._tasks:
            raise ValueError(f"a background task named {name!r} is supervised already")
        task = self._tasks[name] = _Task(name, round, interval_s, critical, wait_first)
        self._metrics.background_task_restarts.labels(name)  # the series exists from the start, at 0
        if self._running:
            self._spawn(task)

    def critical_down(self) -> list[str]:
        """The critical tasks that crashed and have not completed a round since."""
        return [task.name for task in self._tasks.values() if task.critical and task.down]

    async def start(self) -> None:
        self._running = True
        for task in self._tasks.values():
            if task.runner is None:
                self._spawn(task)

    async def stop(self) -> None:
        """Cancel every task and wait until each has ended."""
        self._running = False
        running = [(task, task.runner) for task in self._tasks.values() if task.runner is not None]
        for _, runner in running:
            runner.cancel()
        results = await asyncio.gather(*(runner for _, runner in running), return_exceptions=True)
        for (task, _), result in zip(running, results, strict=True):
            task.runner = None
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                logger.error("background task %s ended with %r at shutdown", task.name, result)

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _spawn(self, task: _Task) -> None:
        task.runner = asyncio.create_task(self._supervise(task), name=f"supervised:{task.name}")

    async def _supervise(self, task: _Task) -> None:
        if task.wait_first:
            await self._sleep(task.interval_s)
        delay = 0.0
        while True:
            started = self._clock()
            try:
                await self._rounds(task)
            except Exception:
                delay = self._backoff.delay(delay, ran_s=self._clock() - started)
                self._crashed(task, delay)
                await self._sleep(delay)

    def _crashed(self, task: _Task, delay: float) -> None:
        """Mark, count and log (with the traceback: called from the ``except``) a crash."""
        task.down = True
        self._metrics.background_task_restarts.labels(task.name).inc()
        effect = " (critical: /health?scope=gateway answers 503 until it recovers)" if task.critical else ""
        logger.exception("background task %s crashed%s; restarting it in %.1f s", task.name, effect, delay)

    async def _rounds(self, task: _Task) -> None:
        while True:
            await task.round()
            if task.down:
                logger.info("background task %s is running again", task.name)
                task.down = False
            await self._sleep(task.interval_s)
