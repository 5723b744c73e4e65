"""``gateway serve --workers N``: N gateway processes on one port, one ledger, one ``/metrics``.

The parent serves nothing. It checks the settings and files once (one error line, not N), holds
the port, empties the workers' metrics directory and starts N worker processes, then supervises
them. Each worker is a whole ``gateway serve`` (the same app, uvloop, the guarded connections of
``gateway.connections``) on a listening socket of its own with ``SO_REUSEPORT``: the kernel spreads
new connections evenly over the workers' sockets, where with one shared socket whichever worker
wakes first accepts a whole burst of them (uvloop and asyncio accept until the queue is empty).

What the workers share, and how:

- limits, budgets and engine drains: Redis (``Settings.check_startup`` requires it);
- tenants, keys and the ledger: the database (SQLite serialises its writers, ``gateway.store.sqlite``);
- the journal: a directory each (``gateway.metering.journal.open_journal``);
- ``/metrics``: prometheus_client's multiprocess files, any worker answers for all (``gateway.metrics``);
- the usage webhook and the reconciliation's settlement: claimed through the store, once at a time.

A worker that dies is started again, after a back-off when it keeps dying; one that could not
start (a port, the database, a file) stops them all, as a new one would fail the same way.
SIGTERM or SIGINT: every worker drains (``GATEWAY_DRAIN_TIMEOUT_S``), then the parent exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

from gateway.app import create_app
from gateway.config.loader import ConfigError
from gateway.metrics import MULTIPROCESS_DIR_VARIABLE, forget_worker, reset_multiprocess_dir
from gateway.server import STARTUP_FAILURE, configure_logging, run_async, serve_gateway
from gateway.settings import Settings

logger = logging.getLogger(__name__)

POLL_S = 0.2
# A worker that dies sooner than this after its start is started again after a growing pause.
STEADY_S = 30.0
MAX_BACKOFF_S = 30.0
# Beyond the drain: the lifespan's close (the ledger's last batch) before a worker is killed.
STOP_GRACE_S = 30.0
_spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of the parent's loop


async def serve(settings: Settings) -> int:
    """``gateway serve``: one process, or ``settings.workers`` of them under a supervisor."""
    if settings.workers == 1:
        return await serve_gateway(settings)
    create_app(settings)  # every setting and file checked here, once (the app itself is not used)
    try:
        reservation = listening_socket(settings.host, settings.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    try:
        port = reservation.getsockname()[1]  # port 0: the one the system chose, for every worker
        settings = settings.model_copy(update={"port": port})
        metrics_dir = settings.metrics_path()
        reset_multiprocess_dir(metrics_dir)
        os.environ[MULTIPROCESS_DIR_VARIABLE] = str(metrics_dir)  # inherited: read by each worker's imports
        return await WorkerSupervisor(settings, metrics_dir).run()
    finally:
        reservation.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, so every worker binds its own.
    Bound but not listening (the parent's), it holds the port and takes no connections."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class _Slot:
    """One worker's place: the process in it, or when the next one starts."""

    process: BaseProcess | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff_s: float = 0.0


class WorkerSupervisor:
    """Starts ``settings.workers`` workers, starts again those that die, stops them all on a signal."""

    def __init__(self, settings: Settings, metrics_dir: Path) -> None:
        self._settings = settings
        self._metrics_dir = metrics_dir
        self._slots = [_Slot() for _ in range(settings.workers)]
        self._stopping = asyncio.Event()
        self.status = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stopping.set)
        try:
            for slot in self._slots:
                self._start(slot)
            settings = self._settings
            logger.info("%d gateway workers on http://%s:%d", len(self._slots), settings.host, settings.port)
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), POLL_S)
                self._tend(time.monotonic())
            await self._stop_all()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        return self.status

    def _start(self, slot: _Slot) -> None:
        process = _spawn.Process(target=run_worker, args=(self._settings, os.getpid()), name="gateway-worker")
        process.start()
        slot.process, slot.started_at = process, time.monotonic()

    def _tend(self, now: float) -> None:
        """Reap the workers that exited; start those whose pause is over."""
        for slot in self._slots:
            process = slot.process
            if process is None:
                if now >= slot.restart_at and not self._stopping.is_set():
                    self._start(slot)
                continue
            if process.is_alive() or self._stopping.is_set():
                continue
            process.join()
            assert process.pid is not None
            forget_worker(process.pid, self._metrics_dir)
            slot.process = None
            if process.exitcode == STARTUP_FAILURE:
                logger.error("worker %d could not start: stopping every worker", process.pid)
                self.status = 1
                self._stopping.set()
                return
            steady = now - slot.started_at >= STEADY_S
            slot.backoff_s = 0.0 if steady else min(max(2 * slot.backoff_s, 1.0), MAX_BACKOFF_S)
            slot.restart_at = now + slot.backoff_s
            logger.error(
                "worker %d exited (status %s); a new one starts in %.0f s",
                process.pid,
                process.exitcode,
                slot.backoff_s,
            )

    async def _stop_all(self) -> None:
        """SIGTERM to every worker; each drains and closes; those still there at the deadline are killed."""
        running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self._settings.drain_timeout_s + STOP_GRACE_S
        while any(p.is_alive() for p in running) and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        for process in running:
            if process.is_alive():
                logger.error("worker %d did not stop in time: killed", process.pid)
                process.kill()
            process.join()
            assert process.pid is not None
            forget_worker(process.pid, self._metrics_dir)


def run_worker(settings: Settings, parent: int) -> None:
    """A worker process: the gateway on its own ``SO_REUSEPORT`` socket until SIGTERM, or until
    its parent is gone (a supervisor killed outright must not leave workers serving)."""
    configure_logging(settings.log_level)
    threading.Thread(target=_stop_without, args=(parent,), daemon=True, name="parent-watch").start()
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as exc:  # another server listens there (one without SO_REUSEPORT)
        logger.error("worker %d cannot listen on %s:%d: %s", os.getpid(), settings.host, settings.port, exc)
        sys.exit(STARTUP_FAILURE)
    sys.exit(run_async(serve_gateway(settings, sockets=[sock])))


def _stop_without(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    logger.warning("the supervisor %d is gone: worker %d stops", parent, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)
