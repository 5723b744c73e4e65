"""Engine processes: each in its own process group, dying with its launcher, never on a taken port.

A launcher killed with ``-9`` runs no cleanup, so its engines are told by the kernel instead: on
Linux each engine asks, between fork and exec, for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``). SIGTERM rather than SIGKILL: vLLM's server then stops the engine-core and
worker processes it started, which a SIGKILL would leave behind. A port that something already
listens on (an engine an earlier launcher left, another program) is refused before the engine is
started: it would crash-loop on the busy port while the gateway served from whatever holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import IO

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_DEATH_SIGNAL = signal.SIGTERM


class EngineStartError(RuntimeError):
    """An engine exited or never became healthy while the launcher waited for it."""


class PortTakenError(EngineStartError):
    """Something listens on an engine's port already; the engine is not started."""

    def __init__(self, name: str, host: str, port: int) -> None:
        super().__init__(
            f"{name}: port {port} on {host} is taken by another process (an engine left by an earlier "
            f"launcher?); stop it (e.g. `fuser -k {port}/tcp`) or choose another base_port"
        )


def port_taken(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` already. The probe binds the way uvicorn does
    (``SO_REUSEADDR``), so a port whose last connections linger in TIME_WAIT counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def die_with_parent(sig: int = PARENT_DEATH_SIGNAL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when this process dies;
    None where ``prctl`` does not exist (not Linux). libc is loaded here, before the fork: the
    child then only makes two system calls."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the launcher died between fork and prctl: nobody would tell us
            os.kill(os.getpid(), sig)

    return preexec


async def spawn(argv: list[str], env: dict[str, str], log: IO[bytes]) -> asyncio.subprocess.Process:
    """Start an engine in a new session (its own process group: stopping it stops whatever it
    forks) that dies with this process; output to ``log``."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )


def signal_group(process: asyncio.subprocess.Process | None, sig: int) -> None:
    """Send ``sig`` to the engine's whole process group (vLLM's engine-core and workers too)."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
