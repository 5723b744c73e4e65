"""Start, watch and stop the engine processes a pool spec describes.

Each replica of a launched pool is one vLLM OpenAI server (``python -m
vllm.entrypoints.openai.api_server``; the ``vllm`` console script trips over the CPU wheel's
package metadata) or, for ``engine: sim``, one ``python -m engines.sim``. Every engine runs in its
own session so that stopping it also stops the engine-core and worker processes vLLM forks, and
dies with the launcher, even one killed with -9 (``engines.process``). A port already taken is
refused before anything starts. An engine that exits is restarted with backoff; whoever routes
(``drain_hook``) keeps requests off it meanwhile and is told the moment it serves again.
Engines bind loopback only and require the API key only the gateway knows (``VLLM_API_KEY``); the
gateway is the one door. Every engine reports cached prompt tokens
(``--enable-prompt-tokens-details``), which the gateway bills at the cached-input price.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from engines.commands import EngineCommand, build_commands, engine_env, sim_argv, vllm_argv
from engines.drain import DrainHook, GatewayAdminDrain, healthy, wait_idle
from engines.process import EngineStartError, PortTakenError, port_taken, signal_group, spawn
from engines.startup import progress_line
from gateway.config.pools import DeploymentSpec

__all__ = [
    "DrainHook",
    "EngineCommand",
    "EngineLauncher",
    "EngineStartError",
    "GatewayAdminDrain",
    "ManagedEngine",
    "PortTakenError",
    "build_commands",
    "engine_env",
    "sim_argv",
    "vllm_argv",
]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
PROGRESS_EVERY_S = 10.0
RESTART_BACKOFF_MAX_S = 30.0
# A replica that stayed up this long is healthy again: its restart backoff starts over.
STABLE_AFTER_S = 120.0


# A planned restart waits this long for the engine's requests to finish before stopping it.
DRAIN_TIMEOUT_S = 120.0


@dataclass
class ManagedEngine:
    """One replica and the process currently running it."""

    command: EngineCommand
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_a_row: int = 0
    ready: bool = False
    restarting: bool = False  # a planned restart is under way: the supervisor keeps off

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def recent_log(self, max_bytes: int = 256_000) -> str:
        """The log's last ``max_bytes``: room for a whole start's lines."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - max_bytes))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def progress(self) -> str:
        """``llama#0 loading weights (12 s)``: the phase of its start, not a raw log line."""
        return progress_line(self.command.name, time.monotonic() - self.started_at, self.recent_log())


class EngineLauncher:
    """Starts every launched replica of ``spec``, waits for health, restarts the dead, stops all."""

    def __init__(
        self,
        spec: DeploymentSpec,
        data_dir: Path,
        log_dir: Path,
        drain_hook: DrainHook | None = None,
        api_key: str | None = None,
        *,
        is_port_taken: Callable[[str, int], bool] = port_taken,
        ready_timeout_s: float = 900.0,
    ) -> None:
        self._spec = spec
        self._api_key = api_key
        self._data_dir = Path(data_dir)
        self._log_dir = Path(log_dir)
        self.drain_hook = drain_hook
        self.engines: list[ManagedEngine] = []
        self._rolling: asyncio.Task[None] | None = None
        self._port_taken = is_port_taken
        self.ready_timeout_s = ready_timeout_s  # for an engine restarted after it died

    async def start(self) -> None:
        """Start every engine; ``PortTakenError`` (nothing started) if one's port is taken."""
        # Building the tiny model takes seconds of CPU: keep the event loop free meanwhile.
        commands = await asyncio.to_thread(
            build_commands, self._spec, self._data_dir, sys.executable, self._api_key
        )
        for command in commands:
            self._check_port(command)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for command in commands:
            log_path = self._log_dir / f"{command.name.replace('#', '-')}.log"
            engine = ManagedEngine(command, log_path)
            self.engines.append(engine)
            await self._spawn(engine)

    def _check_port(self, command: EngineCommand) -> None:
        host, port = command.address
        if self._port_taken(host, port):
            raise PortTakenError(command.name, host, port)

    async def _spawn(self, engine: ManagedEngine) -> None:
        self._check_port(engine.command)
        with engine.log_path.open("ab") as log:
            # The log is kept across restarts; a header line separates the runs.
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {engine.command.name}\n".encode())
            log.flush()
            engine.process = await spawn(engine.command.argv, {**os.environ, **engine.command.env}, log)
        engine.started_at = time.monotonic()
        engine.ready = False
        logger.info("started %s pid=%s log=%s", engine.command.name, engine.process.pid, engine.log_path)

    async def wait_ready(self, timeout_s: float, on_progress: Progress | None = None) -> None:
        """Return once every engine answers ``/health`` with 200; raise if one exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        next_progress = 0.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                pending = [e for e in self.engines if not e.ready]
                for engine in pending:
                    if not engine.alive:
                        status = engine.process.returncode if engine.process else None
                        raise EngineStartError(
                            f"{engine.command.name} exited with status {status} while starting;"
                            f" log {engine.log_path}:\n{engine.log_tail()}"
                        )
                    engine.ready = await healthy(session, engine.command.url)
                    if engine.ready and on_progress:
                        waited = time.monotonic() - engine.started_at
                        on_progress(
                            f"{engine.command.name} ready at {engine.command.url} after {waited:.0f} s"
                        )
                if all(e.ready for e in self.engines):
                    return
                now = time.monotonic()
                if now > deadline:
                    names = ", ".join(e.command.name for e in self.engines if not e.ready)
                    raise EngineStartError(f"not healthy after {timeout_s:.0f} s: {names}")
                if on_progress and now >= next_progress:
                    next_progress = now + PROGRESS_EVERY_S
                    for engine in (e for e in self.engines if not e.ready):
                        on_progress(engine.progress())
                await asyncio.sleep(0.5)

    async def supervise(self, poll_s: float = 1.0) -> None:
        """Run until cancelled: every engine that exits is brought back (``_recover``), each on
        its own, so one engine's slow start never delays another's."""
        recovering: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                for engine in self.engines:
                    task = recovering.get(engine.command.name)
                    if (task is None or task.done()) and _died(engine):
                        recovering[engine.command.name] = asyncio.create_task(self._recover(engine))
                await asyncio.sleep(poll_s)
        finally:
            for task in recovering.values():
                task.cancel()
            await asyncio.gather(*recovering.values(), return_exceptions=True)

    async def _recover(self, engine: ManagedEngine) -> None:
        """An engine died: routing keeps off it (``drain_hook``: requests wait for it instead of
        failing on it), it is restarted with backoff until it answers ``/health``, and routing
        is told at once."""
        url, hook = engine.command.url, self.drain_hook
        if hook is not None:
            await hook.drain(url)
        while True:
            try:
                await self._restart(engine)
                await self._wait_one_ready(engine, self.ready_timeout_s)
                break
            except EngineStartError as exc:  # a taken port, an exit or a hang while starting
                logger.error("%s", str(exc).splitlines()[0])
                signal_group(engine.process, signal.SIGKILL)
                engine.started_at = time.monotonic()  # a failed start is no stable run
        logger.warning("%s is serving again at %s", engine.command.name, url)
        if hook is not None:
            await hook.resume(url)

    async def _restart(self, engine: ManagedEngine) -> None:
        uptime = time.monotonic() - engine.started_at
        engine.failures_in_a_row = 1 if uptime > STABLE_AFTER_S else engine.failures_in_a_row + 1
        backoff = restart_backoff_s(engine.failures_in_a_row)
        status = engine.process.returncode if engine.process is not None else None
        logger.warning(
            "%s exited with status %s after %.0f s; restarting in %.0f s",
            engine.command.name,
            status,
            uptime,
            backoff,
        )
        await asyncio.sleep(backoff)
        engine.restarts += 1
        await self._spawn(engine)

    async def restart(
        self, name: str, drain_timeout_s: float = DRAIN_TIMEOUT_S, ready_timeout_s: float = 900.0
    ) -> None:
        """A planned restart: the router sends the engine nothing new (``drain_hook``), its
        requests in flight finish (up to ``drain_timeout_s``), then it is stopped, started again
        and, once ``/health`` answers, given traffic again."""
        engine = next(e for e in self.engines if e.command.name == name)
        url, hook = engine.command.url, self.drain_hook
        engine.restarting = True
        try:
            if hook is not None:
                await hook.drain(url)
            if not await wait_idle(url, drain_timeout_s):
                logger.warning(
                    "%s still busy after %.0f s of draining; restarting it anyway", name, drain_timeout_s
                )
            await self._stop_one(engine)
            engine.restarts += 1
            await self._spawn(engine)
            await self._wait_one_ready(engine, ready_timeout_s)
        finally:
            engine.restarting = False
            if hook is not None:
                await hook.resume(url)  # health checks still keep it out if it did not come up

    async def rolling_restart(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Restart every engine, one at a time, each drained first (``SIGHUP``)."""
        for engine in list(self.engines):
            logger.info("rolling restart: %s", engine.command.name)
            await self.restart(engine.command.name, drain_timeout_s)

    def restart_on_sighup(self) -> None:
        """``kill -HUP``: a rolling restart (a second signal while one runs is ignored)."""
        loop = asyncio.get_running_loop()

        def start() -> None:
            if self._rolling is None or self._rolling.done():
                self._rolling = loop.create_task(self.rolling_restart(), name="rolling-restart")

        loop.add_signal_handler(signal.SIGHUP, start)

    async def _wait_one_ready(self, engine: ManagedEngine, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while not await healthy(session, engine.command.url):
                if not engine.alive or time.monotonic() > deadline:
                    raise EngineStartError(f"{engine.command.name} did not come back; log {engine.log_path}")
                await asyncio.sleep(0.5)
        engine.ready = True

    async def _stop_one(self, engine: ManagedEngine, grace_s: float = 20.0) -> None:
        if engine.process is None:
            return
        _signal_group(engine, signal.SIGTERM)
        try:
            await asyncio.wait_for(engine.process.wait(), grace_s)
        except TimeoutError:
            logger.warning("%s ignored SIGTERM for %.0f s; killing it", engine.command.name, grace_s)
        _signal_group(engine, signal.SIGKILL)  # and whatever vLLM forked
        await engine.process.wait()

    async def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM every engine's process group, then SIGKILL what is left after ``grace_s``."""
        if self._rolling is not None:
            self._rolling.cancel()
        running = [e for e in self.engines if e.alive]
        for engine in running:
            _signal_group(engine, signal.SIGTERM)
        waits = [asyncio.wait_for(e.process.wait(), grace_s) for e in running if e.process]
        for engine, result in zip(running, await asyncio.gather(*waits, return_exceptions=True), strict=True):
            if isinstance(result, BaseException):
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", engine.command.name, grace_s)
                _signal_group(engine, signal.SIGKILL)
                if engine.process is not None:
                    await engine.process.wait()
        # vLLM's engine-core and workers share the group; make sure none outlives its server.
        for engine in self.engines:
            _signal_group(engine, signal.SIGKILL)


def restart_backoff_s(failures_in_a_row: int) -> float:
    """The wait before restarting an engine that died: 1 s, doubling per failure, up to 30 s."""
    return float(min(2.0 ** (failures_in_a_row - 1), RESTART_BACKOFF_MAX_S))


def _died(engine: ManagedEngine) -> bool:
    """Exited, and not because a planned restart stopped it."""
    return not engine.restarting and engine.process is not None and engine.process.returncode is not None


def _signal_group(engine: ManagedEngine, sig: int) -> None:
    signal_group(engine.process, sig)
