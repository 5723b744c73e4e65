"""The processes a benchmark runs against: a simulated engine and the gateway in front of it.

Everything listens on 127.0.0.1 only, and every process started here is stopped on the way out.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.support.processes import Process, free_port, gateway_cli

MODEL = "sim-model"
TENANT = "bench"


@dataclass(frozen=True)
class Stack:
    """A running engine and gateway, and a tenant key that the gateway accepts."""

    engine_port: int
    gateway_port: int
    api_key: str
    engine_pid: int
    gateway_pid: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, its live children (the workers of ``gateway serve
    --workers``) and its waited-for ones."""
    process = psutil.Process(pid)
    seconds = 0.0
    for member in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            seconds += times.user + times.system
    times = process.cpu_times()
    return seconds + times.children_user + times.children_system


@dataclass(frozen=True)
class GatewayOptions:
    """How the gateway runs: its worker processes, and the Redis its limiter shares (None: in-process)."""

    workers: int = 1
    redis_url: str | None = None
    redis_prefix: str = "bench:"


def _gateway_env(tmp: Path, engine_port: int, gateway_port: int, options: GatewayOptions) -> dict[str, str]:
    pools = tmp / "pools.yaml"
    pools.write_text(f'pools:\n  - served_name: {MODEL}\n    endpoints: ["http://127.0.0.1:{engine_port}"]\n')
    limits = tmp / "limits.yaml"  # no defaults: the benchmark tenant is unlimited, not throttled
    limits.write_text("defaults:\n")
    return {
        "GATEWAY_CONFIG_PATH": str(pools),
        "GATEWAY_LIMITS_PATH": str(limits),
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp / 'gateway.db'}",
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_WORKERS": str(options.workers),
        **({"GATEWAY_REDIS_URL": options.redis_url} if options.redis_url else {}),
        "GATEWAY_REDIS_PREFIX": options.redis_prefix,
    }


def tenant_key(env: dict[str, str], tenant: str) -> str:
    """Create ``tenant`` and a key for it with the ``gateway`` CLI on ``env``'s database; the secret."""

    gateway_cli(env, "tenants", "create", tenant)
    return gateway_cli(env, "keys", "create", "--tenant", tenant).strip().splitlines()[-1]


def _wait_for_workers(url: str, workers: int, timeout_s: float = 60) -> None:
    """Until every worker answers (each names itself in ``x-gateway-worker``), so the first phase
    does not run on fewer of them."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while workers > 1 and len(seen) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(seen)} of {workers} gateway workers answered within {timeout_s} s")
        seen.add(httpx.get(url, timeout=5).headers.get("x-gateway-worker", ""))  # a new connection each
        time.sleep(0.05)


@contextlib.contextmanager
def running_stack(tmp: Path, output_tokens: int, options: GatewayOptions | None = None) -> Iterator[Stack]:
    """Start the engine, create a tenant key, start the gateway; stop both on exit."""
    with contextlib.ExitStack() as stack:
        engine_port, gateway_port = free_port(), free_port()
        engine = Process(
            [
                sys.executable,
                "-m",
                "engines.sim",
                "--port",
                str(engine_port),
                "--model",
                MODEL,
                "--output-tokens",
                str(output_tokens),
                "--ttft-ms",
                "0",
                "--itl-ms",
                "0",
                "--log-level",
                "warning",
            ],
            tmp / "engine.log",
        )
        stack.callback(engine.stop)
        engine.wait_http(f"http://127.0.0.1:{engine_port}/health", 30)

        env = _gateway_env(tmp, engine_port, gateway_port, options or GatewayOptions())
        api_key = tenant_key(env, TENANT)
        gateway = Process([sys.executable, "-m", "gateway.cli", "serve"], tmp / "gateway.log", env)
        stack.callback(gateway.stop)
        gateway.wait_http(f"http://127.0.0.1:{gateway_port}/health", 60)
        _wait_for_workers(f"http://127.0.0.1:{gateway_port}/health", (options or GatewayOptions()).workers)
        yield Stack(engine_port, gateway_port, api_key, engine.popen.pid, gateway.popen.pid)
