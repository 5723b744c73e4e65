"""What the fault benchmark (``benchmarks/faults.py``) runs: a gateway process pinned to a CPU in
front of a launched engine pool, ``gateway up`` as a user runs it, the process tree a kill -9 must
take down, and the ledger the gateway wrote.

Everything listens on 127.0.0.1 only, and every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import psutil
import psycopg
import yaml

from benchmarks.routing_stack import DATA_DIR, MODEL, VLLM_ARGS, VLLM_ENV
from engines.models import TINY_LLAMA, resolve_model_source
from tests.support.metrics import total
from tests.support.processes import Process, free_port, gateway_cli

Engine = Literal["sim", "vllm"]
ADMIN_TOKEN = "faults-benchmark-" + "7c4e9a1b2d3f" * 3
UP_READY_TIMEOUT_S = 900.0
BANNER_END = "Press Ctrl-C"
Report = list[dict[str, Any]]  # a scenario's table rows
PROMPT = "go"


def sim_args(args: argparse.Namespace, ttft_ms: float = 0.0) -> list[str]:
    """The simulated engine: ``--max-tokens`` tokens ``--itl-ms`` apart after ``ttft_ms``."""
    return [
        *("--ttft-ms", str(ttft_ms), "--itl-ms", str(args.itl_ms)),
        *("--output-tokens", str(args.max_tokens), "--max-model-len", "16384"),
    ]


def gateway_env(args: argparse.Namespace) -> dict[str, str]:
    """``--gateway-env NAME=VALUE …``: settings a run changes (e.g. ``GATEWAY_NO_ENGINE_WAIT_S``)."""
    return dict(pair.split("=", 1) for pair in args.gateway_env)


def client_session() -> aiohttp.ClientSession:
    """The benchmark's clients: unbounded connections, kept alive, long streams allowed."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=900)
    )


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """``argv`` under ``taskset -c CPU`` (when asked for and taskset exists)."""
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


@dataclass
class GatewayHandle:
    """A gateway process: its URL, environment (for the CLI) and log."""

    url: str
    env: dict[str, str]
    process: Process

    def cli(self, *args: str) -> str:
        """The ``gateway`` CLI on this gateway's database; its stdout."""
        return gateway_cli(self.env, *args)

    def new_key(self, tenant: str, max_concurrent: int | None = None) -> str:
        """A tenant (limited to ``max_concurrent`` requests in flight, if given) and a key for it."""
        self.cli("tenants", "create", tenant)
        if max_concurrent is not None:
            self.cli("limits", "set", "--tenant", tenant, "--max-concurrent", str(max_concurrent))
        return self.cli("keys", "create", "--tenant", tenant).strip().splitlines()[-1]

    async def metric(self, session: aiohttp.ClientSession, name: str) -> float:
        """One gateway metric, summed over its labels (0 when absent)."""
        async with session.get(f"{self.url}/metrics") as response:
            return total(await response.text(), name)

    def database(self) -> Path:
        return Path(self.env["GATEWAY_DATABASE_URL"].removeprefix("sqlite:///"))


@contextlib.asynccontextmanager
async def gateway(
    work: Path,
    urls: list[str],
    cpu: int | None,
    extra_env: dict[str, str] | None = None,
    database_url: str | None = None,
) -> AsyncIterator[GatewayHandle]:
    """``gateway serve`` over ``urls`` (one pool of ``MODEL``), no default limits, pinned to ``cpu``."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (work / "pools.yaml").write_text(yaml.safe_dump({"pools": [{"served_name": MODEL, "endpoints": urls}]}))
    (work / "limits.yaml").write_text("defaults:\n")  # only the limits a scenario sets
    env = {
        "GATEWAY_CONFIG_PATH": str(work / "pools.yaml"),
        "GATEWAY_LIMITS_PATH": str(work / "limits.yaml"),
        "GATEWAY_DATABASE_URL": database_url or f"sqlite:///{work / 'gateway.db'}",
        "GATEWAY_DATA_DIR": str(work / "data"),
        "GATEWAY_JOURNAL_DIR": str(work / "journal"),
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        **(extra_env or {}),
    }
    argv = pinned([sys.executable, "-m", "gateway.cli", "serve"], cpu)
    proc = Process(argv, work / f"gateway-{port}.log", env)
    try:
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/health", 60)
        yield GatewayHandle(f"http://127.0.0.1:{port}", env, proc)
    finally:
        await asyncio.to_thread(proc.stop)


def ledger_rows(database: Path) -> dict[str, tuple[int, str]]:
    """Request id → (completion tokens, outcome) from a SQLite ledger."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT request_id, completion_tokens, outcome FROM usage_ledger WHERE outcome != 'adjustment'"
        )
        return {request_id: (tokens, outcome) for request_id, tokens, outcome in rows}


async def postgres_counts(url: str, ids: list[str]) -> tuple[int, int]:
    """(rows, distinct request ids) of ``ids`` in a PostgreSQL ledger."""
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=2) as conn:
        cursor = await conn.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM usage_ledger WHERE request_id = ANY(%s)", (ids,)
        )
        row = await cursor.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


# --- `gateway up`, as a user runs it -------------------------------------------------------------


def up_config(work: Path, engine: Engine, replicas: int, engine_port: int) -> Path:
    """A pool spec for ``gateway up``: simulated engines, or the tiny model on vLLM (the model
    path resolved once here, so each run does not build it again)."""
    pool: dict[str, Any] = {
        "served_name": MODEL,
        "engine": engine,
        "replicas": replicas,
        "base_port": engine_port,
    }
    if engine == "vllm":
        model = resolve_model_source(TINY_LLAMA, DATA_DIR)
        pool |= {"model": model, "vllm_args": VLLM_ARGS, "env": VLLM_ENV}
    path = work / "up.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool]}))
    return path


@dataclass
class UpRun:
    """One ``gateway up`` process, ready: how long that took, and the demo key it printed."""

    process: Process
    url: str
    ready_s: float
    key: str


def start_up(work: Path, config: Path, port: int, name: str) -> UpRun:
    """``gateway up`` on ``config``; returns once its banner is printed (or raises with its log)."""
    data = work / "data"
    env = {
        "GATEWAY_CONFIG_PATH": str(config),
        "GATEWAY_PORT": str(port),
        "GATEWAY_DATA_DIR": str(data),
        "GATEWAY_DATABASE_URL": f"sqlite:///{data / 'gateway.db'}",
        "XDG_STATE_HOME": str(work / "state"),  # where `gateway up` records its data directory
    }
    started = time.monotonic()
    proc = Process([sys.executable, "-m", "gateway.cli", "up"], work / f"{name}.log", env)
    try:
        banner = _wait_banner(proc, UP_READY_TIMEOUT_S)
    except BaseException:
        proc.stop()
        raise
    ready_s = time.monotonic() - started
    key = next(word for word in banner.split() if word.startswith("sk-"))
    return UpRun(proc, f"http://127.0.0.1:{port}", ready_s, key)


def _wait_banner(proc: Process, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = proc.log_path.read_text(errors="replace")
        if BANNER_END in text:
            return text
        if proc.popen.poll() is not None:
            raise RuntimeError(f"gateway up exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"gateway up not ready after {timeout_s:.0f} s:\n{proc.log_tail()}")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (engines and whatever they forked)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie is gone: it only waits to be reaped)."""
    left = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
    return left


def wait_gone(pids: list[int], timeout_s: float) -> tuple[list[int], float]:
    """Wait until none of ``pids`` runs; (those left at the deadline, seconds waited)."""
    started = time.monotonic()
    while (left := alive(pids)) and time.monotonic() - started < timeout_s:
        time.sleep(0.05)
    return left, time.monotonic() - started


def kill_all(pids: list[int]) -> None:
    """SIGKILL what a failed scenario left behind (only processes this run started)."""
    for pid in alive(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
