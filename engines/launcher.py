"""Start, watch and stop the engine processes a pool spec describes.

Each replica of a launched pool is one vLLM OpenAI server (``python -m
vllm.entrypoints.openai.api_server``; the ``vllm`` console script trips over the CPU wheel's
package metadata) or, for ``engine: sim``, one ``python -m engines.sim``. Every engine runs in its
own session so that stopping it also stops the engine-core and worker processes vLLM forks.
Engines bind loopback only; the gateway is the one public door.
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
from typing import Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from engines.models import resolve_model_source
from engines.placement import BIND_VARIABLE, cpu_bindings
from gateway.config.pools import DeploymentSpec, PoolSpec

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
PROGRESS_EVERY_S = 10.0
RESTART_BACKOFF_MAX_S = 30.0
# A replica that stayed up this long is healthy again: its restart backoff starts over.
STABLE_AFTER_S = 120.0


# A planned restart waits this long for the engine's requests to finish before stopping it.
DRAIN_TIMEOUT_S = 120.0
_BUSY_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


class DrainHook(Protocol):
    """Whoever routes to the engines: told before one is restarted on purpose and when it is back."""

    async def drain(self, url: str) -> None: ...

    async def resume(self, url: str) -> None: ...


class GatewayAdminDrain:
    """A drain hook for gateways in other processes, through their admin API
    (``POST /admin/engines/drain`` and ``/resume``). A gateway that cannot be told is logged and
    skipped: it still fails over when the engine stops."""

    def __init__(self, gateways: list[str], admin_token: str) -> None:
        self._gateways = [g.rstrip("/") for g in gateways]
        self._headers = {"Authorization": f"Bearer {admin_token}"}

    async def drain(self, url: str) -> None:
        await self._tell("drain", url)

    async def resume(self, url: str) -> None:
        await self._tell("resume", url)

    async def _tell(self, action: str, url: str) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for gateway in self._gateways:
                target = f"{gateway}/admin/engines/{action}"
                try:
                    async with session.post(target, json={"url": url}, headers=self._headers) as response:
                        if response.status != 200:
                            logger.warning(
                                "%s answered %s: %s", target, response.status, await response.text()
                            )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    logger.warning("could not reach %s: %s", target, exc)


class EngineStartError(RuntimeError):
    """An engine exited or never became healthy while the launcher waited for it."""


@dataclass(frozen=True)
class EngineCommand:
    """Everything needed to (re)start one engine replica."""

    name: str  # ``served_name#replica``
    argv: list[str]
    env: dict[str, str]
    url: str


def vllm_argv(pool: PoolSpec, model: str, port: int, python: str = sys.executable) -> list[str]:
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        pool.served_name,
        "--host",
        pool.host,
        "--port",
        str(port),
    ]
    if pool.kind == "embed" and "--runner" not in pool.vllm_args:
        argv += ["--runner", "pooling"]
    return argv + pool.tool_call_flags() + pool.vllm_args


def sim_argv(pool: PoolSpec, port: int, python: str = sys.executable) -> list[str]:
    argv = [python, "-m", "engines.sim", "--host", pool.host, "--port", str(port)]
    return argv + ["--model", pool.served_name, *pool.vllm_args]


def engine_env(pool: PoolSpec, replica: int, cpu_bind: str | None = None) -> dict[str, str]:
    """The replica's environment additions: offline hub, GPU or CPU placement, the pool's own ``env``."""
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if pool.device == "gpu" and pool.placement:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in pool.placement[replica].gpu_ids)
    if cpu_bind is not None:
        env[BIND_VARIABLE] = cpu_bind
    return env | pool.env


def build_commands(spec: DeploymentSpec, data_dir: Path, python: str = sys.executable) -> list[EngineCommand]:
    """One command per launched replica; resolves (and builds if needed) each pool's model once."""
    commands = []
    cpu_binds = cpu_bindings(spec)
    for pool in spec.pools:
        if not pool.launched:
            continue
        model = resolve_model_source(pool.model, data_dir) if pool.engine == "vllm" else pool.model
        for replica, (port, url) in enumerate(zip(pool.ports(), pool.endpoint_urls(), strict=True)):
            argv = (
                vllm_argv(pool, model, port, python)
                if pool.engine == "vllm"
                else sim_argv(pool, port, python)
            )
            name = f"{pool.served_name}#{replica}"
            commands.append(EngineCommand(name, argv, engine_env(pool, replica, cpu_binds.get(name)), url))
    return commands


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

    def last_log_line(self) -> str:
        tail = self.log_tail(5).strip().splitlines()
        return tail[-1][-160:] if tail else ""


class EngineLauncher:
    """Starts every launched replica of ``spec``, waits for health, restarts the dead, stops all."""

    def __init__(
        self, spec: DeploymentSpec, data_dir: Path, log_dir: Path, drain_hook: DrainHook | None = None
    ) -> None:
        self._spec = spec
        self._data_dir = Path(data_dir)
        self._log_dir = Path(log_dir)
        self.drain_hook = drain_hook
        self.engines: list[ManagedEngine] = []
        self._rolling: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Building the tiny model takes seconds of CPU: keep the event loop free meanwhile.
        commands = await asyncio.to_thread(build_commands, self._spec, self._data_dir)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for command in commands:
            log_path = self._log_dir / f"{command.name.replace('#', '-')}.log"
            engine = ManagedEngine(command, log_path)
            self.engines.append(engine)
            await self._spawn(engine)

    async def _spawn(self, engine: ManagedEngine) -> None:
        with engine.log_path.open("ab") as log:
            # The log is kept across restarts; a header line separates the runs.
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {engine.command.name}\n".encode())
            log.flush()
            engine.process = await asyncio.create_subprocess_exec(
                *engine.command.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **engine.command.env},
                start_new_session=True,
            )
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
                    engine.ready = await _healthy(session, engine.command.url)
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
                        waited = now - engine.started_at
                        on_progress(
                            f"{engine.command.name} loading ({waited:.0f} s): {engine.last_log_line()}"
                        )
                await asyncio.sleep(0.5)

    async def supervise(self, poll_s: float = 1.0) -> None:
        """Run until cancelled: restart any engine that exits, with exponential backoff."""
        while True:
            for engine in self.engines:
                if (
                    not engine.restarting
                    and engine.process is not None
                    and engine.process.returncode is not None
                ):
                    await self._restart(engine)
            await asyncio.sleep(poll_s)

    async def _restart(self, engine: ManagedEngine) -> None:
        assert engine.process is not None
        uptime = time.monotonic() - engine.started_at
        engine.failures_in_a_row = 1 if uptime > STABLE_AFTER_S else engine.failures_in_a_row + 1
        backoff = min(2.0 ** (engine.failures_in_a_row - 1), RESTART_BACKOFF_MAX_S)
        logger.warning(
            "%s exited with status %s after %.0f s; restarting in %.0f s",
            engine.command.name,
            engine.process.returncode,
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
            if not await _wait_idle(url, drain_timeout_s):
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
            while not await _healthy(session, engine.command.url):
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


def _signal_group(engine: ManagedEngine, sig: int) -> None:
    if engine.process is None:
        return
    try:
        os.killpg(engine.process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _wait_idle(url: str, timeout_s: float) -> bool:
    """Whether the engine reported no running or waiting request within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            try:
                async with session.get(f"{url}/metrics") as response:
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError):
                return True  # nothing to drain from an engine that does not answer
            busy = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name in _BUSY_METRICS
            )
            if busy == 0:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)


async def _healthy(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/health") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
