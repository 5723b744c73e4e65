"""Metering audit: Σ ledger against the engine's own token counters, with clients that give up.

A real vLLM CPU engine (the tiny model, pinned to CPU 0) and a gateway process (CPU 1) take a mixed
load: chat and completions, streamed and whole, ``n`` of 1 and 2, stop sequences, long shared
system prompts (prefix-cache hits). A share of the streams is cut by the client at a random point
(before the headers, before the first token, or mid-stream) and some whole requests time out. The
benchmark samples the engine's ``/metrics`` throughout (restarts handled) and compares, per phase:

- engine: Δ ``vllm:prompt_tokens_total``, ``vllm:prompt_tokens_cached_total``,
  ``vllm:generation_tokens_total``;
- ledger: Σ prompt × choices (vLLM counts an ``n > 1`` prompt once per choice), Σ cached,
  Σ completion over request rows, then the same with reconciliation's adjustment rows.

    python -m benchmarks.metering_audit --requests 1000 --abort 0.1 0.3 --restart

Phases run one after another on one engine, each with a fresh gateway and ledger: for each abort
rate, first with the tail read off (``GATEWAY_ABORT_DRAIN_S`` tiny: the engine is cut at once, as
before this design), then on. ``--restart`` restarts the engine (drained, as the launcher does a
planned restart) in the middle of the last phase. Writes a table and JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from benchmarks.routing_stack import WORDS, launched, pool_spec
from benchmarks.stack import tenant_key
from engines.launcher import EngineLauncher, GatewayAdminDrain
from tests.support.metrics import total
from tests.support.processes import Process, free_port

MODEL = "llama"
ADMIN_TOKEN = "audit-" + "f3a9c1d2e4b5" * 4
COUNTERS = {
    "prompt": "vllm:prompt_tokens_total",
    "cached": "vllm:prompt_tokens_cached_total",
    "completion": "vllm:generation_tokens_total",
}
START_TIME = "process_start_time_seconds"


@dataclass
class EngineMeter:
    """Sums an engine's counters across samples; a restart (a new start time, or a counter going
    down) counts the new process's values from zero."""

    url: str
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0.0))
    last: dict[str, float] | None = None
    restarts: int = 0

    async def sample(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.url}/metrics") as response:
                text = await response.text()
        except (aiohttp.ClientError, OSError):
            return False
        now = {kind: total(text, name) for kind, name in COUNTERS.items()}
        now["start"] = total(text, START_TIME)
        last = self.last
        restarted = last is not None and (
            now["start"] != last["start"] or any(now[k] < last[k] for k in COUNTERS)
        )
        for kind in COUNTERS:
            base = 0.0 if restarted or last is None else last[kind]
            if last is not None:
                self.totals[kind] += now[kind] - base
        self.restarts += int(restarted)
        self.last = now
        return True

    def busy(self, text: str) -> bool:
        return total(text, "vllm:num_requests_running") + total(text, "vllm:num_requests_waiting") > 0


@dataclass
class Request:
    api: str
    body: dict[str, Any]
    cut: str  # "" (read to the end), "before_headers", "before_first_token", "mid_stream", "timeout"
    after_events: int = 0
    wait_s: float = 0.0


def make_requests(rng: random.Random, count: int, abort: float) -> list[Request]:
    systems = [" ".join(rng.choice(WORDS) for _ in range(220)) for _ in range(4)]
    requests = []
    for _ in range(count):
        stream = rng.random() < 0.6
        api = "chat" if rng.random() < 0.7 else "completions"
        max_tokens = rng.randint(8, 64)
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        system = rng.choice(systems) if rng.random() < 0.7 else ""
        body: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, "temperature": 1.0}
        if api == "chat":
            messages = [{"role": "system", "content": system}] if system else []
            body["messages"] = [*messages, {"role": "user", "content": user}]
        else:
            body["prompt"] = f"{system}\n{user}"
        if rng.random() < 0.15:
            body["n"] = 2
        if rng.random() < 0.2:
            body["stop"] = [rng.choice(WORDS)]
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        cut, after, wait = "", 0, 0.0
        if stream and rng.random() < abort:
            cut = rng.choice(["before_headers", "before_first_token", "mid_stream", "mid_stream"])
            after, wait = rng.randint(1, max_tokens), rng.uniform(0.0, 0.05)
        elif not stream and rng.random() < abort / 2:
            cut, wait = "timeout", rng.uniform(0.02, 0.3)
        requests.append(Request(api, body, cut, after, wait))
    return requests


async def send(session: aiohttp.ClientSession, url: str, key: str, request: Request) -> str:
    """One request as the client behaves; returns what became of it."""
    path = "/v1/chat/completions" if request.api == "chat" else "/v1/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    post = session.post(url + path, data=orjson.dumps(request.body), headers=headers)
    try:
        if request.cut in ("before_headers", "timeout"):
            async with asyncio.timeout(request.wait_s):
                async with post as response:
                    await response.read()
            return f"{response.status}"
        async with post as response:
            if response.status != 200:
                await response.read()
                return f"{response.status}"
            if request.cut == "before_first_token":
                return "200-cut"  # leaving the block drops the connection
            events = 0
            async for line in response.content:
                if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                    events += 1
                    if request.cut == "mid_stream" and events >= request.after_events:
                        return "200-cut"
            return "200"
    except TimeoutError:
        return "cut"
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def run_load(url: str, key: str, requests: list[Request], concurrency: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    queue = list(reversed(requests))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                outcome = await send(session, url, key, queue.pop())
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


@contextlib.asynccontextmanager
async def gateway(tmp: Path, engine_url: str, env: dict[str, str]) -> AsyncIterator[tuple[str, str, Path]]:
    """A gateway process on CPU 1 over the engine; yields (url, key, ledger database)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (tmp / "pools.yaml").write_text(
        yaml.safe_dump({"pools": [{"served_name": MODEL, "endpoints": [engine_url]}]})
    )
    (tmp / "limits.yaml").write_text("defaults:\n")
    database = tmp / "gateway.db"
    env = {
        "GATEWAY_CONFIG_PATH": str(tmp / "pools.yaml"),
        "GATEWAY_LIMITS_PATH": str(tmp / "limits.yaml"),
        "GATEWAY_DATABASE_URL": f"sqlite:///{database}",
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        # Reconciliation settles a period a few seconds after the engine goes quiet (the default,
        # 60 s, waits out a slow ledger flush on another replica).
        "GATEWAY_RECONCILE_SETTLE_S": "2",
        "GATEWAY_RECONCILE_SETTLE_INTERVAL_S": "1",
        **env,
    }
    key = tenant_key(env, "audit")
    argv = ["taskset", "-c", "1", sys.executable, "-m", "gateway.cli", "serve"]
    proc = Process(argv, tmp / "gateway.log", env)
    try:
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/health", 60)
        yield f"http://127.0.0.1:{port}", key, database
    finally:
        await asyncio.to_thread(proc.stop)


def ledger_sums(database: Path) -> dict[str, dict[str, int]]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(usage_ledger)")}
        choices = "choices" if "choices" in columns else "1"
        cached = "cached_tokens" if "cached_tokens" in columns else "0"
        sums = {}
        for name, where in (
            ("requests", "outcome != 'adjustment'"),
            ("adjustments", "outcome = 'adjustment'"),
        ):
            row = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(prompt_tokens * {choices}), 0), COALESCE(SUM({cached}), 0), "
                f"COALESCE(SUM(completion_tokens), 0) FROM usage_ledger WHERE {where}"
            ).fetchone()
            sums[name] = dict(zip(("rows", "prompt", "cached", "completion"), map(int, row), strict=True))
        return sums


async def wait_idle(
    session: aiohttp.ClientSession, url: str, meter: EngineMeter, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(f"{url}/metrics") as response:
                if not meter.busy(await response.text()):
                    return
        await asyncio.sleep(0.1)


async def planned_restart(
    launcher: EngineLauncher, gateway_url: str, meter: EngineMeter, delay_s: float
) -> None:
    """Drain the engine through the gateway, sample its last counters, restart it, resume."""
    await asyncio.sleep(delay_s)
    engine = launcher.engines[0]
    hook = GatewayAdminDrain([gateway_url], ADMIN_TOKEN)
    await hook.drain(engine.command.url)
    async with aiohttp.ClientSession() as session:
        await wait_idle(session, engine.command.url, meter)
        await asyncio.sleep(3.0)  # the gateway's own sampler sees the engine idle, as we do
        await meter.sample(session)
    await launcher.restart(engine.command.name)
    await hook.resume(engine.command.url)


async def run_phase(
    launcher: EngineLauncher, tmp: Path, args: argparse.Namespace, abort: float, drain_s: float, restart: bool
) -> dict[str, Any]:
    engine_url = launcher.engines[0].command.url
    meter = EngineMeter(engine_url)
    env = {"GATEWAY_ABORT_DRAIN_S": str(drain_s), **dict(kv.split("=", 1) for kv in args.gateway_env)}
    requests = make_requests(random.Random(args.seed), args.requests, abort)
    async with aiohttp.ClientSession() as session, gateway(tmp, engine_url, env) as (url, key, database):
        await wait_idle(session, engine_url, meter)
        await asyncio.sleep(3.0)  # the gateway's sampler marks a quiet point: periods start here
        await meter.sample(session)
        sampling = asyncio.create_task(_sample_forever(session, meter))
        started = time.monotonic()
        restarting = (
            asyncio.create_task(planned_restart(launcher, url, meter, args.restart_after_s))
            if restart
            else None
        )
        outcomes = await run_load(url, key, requests, args.concurrency)
        if restarting is not None:
            await restarting
        elapsed = time.monotonic() - started
        await wait_idle(session, engine_url, meter)
        await asyncio.sleep(args.settle_s)  # ledger flush (and reconciliation's settlement)
        sampling.cancel()
        await meter.sample(session)
        ledger = ledger_sums(database)
    engine = {kind: int(value) for kind, value in meter.totals.items()}
    adjusted = {k: ledger["requests"][k] + ledger["adjustments"][k] for k in COUNTERS}
    return {
        "abort": abort,
        "drain_s": drain_s,
        "restart": restart,
        "requests": args.requests,
        "elapsed_s": round(elapsed, 1),
        "outcomes": outcomes,
        "engine": engine,
        "engine_restarts": meter.restarts,
        "ledger": ledger,
        "difference_before_adjustments": {k: ledger["requests"][k] - engine[k] for k in COUNTERS},
        "difference_after_adjustments": {k: adjusted[k] - engine[k] for k in COUNTERS},
    }


async def _sample_forever(session: aiohttp.ClientSession, meter: EngineMeter) -> None:
    while True:
        await meter.sample(session)
        await asyncio.sleep(0.25)


def table(phases: list[dict[str, Any]]) -> str:
    lines = [
        "| abort | tail read | restart | requests | engine prompt / cached / completion | ledger − engine "
        "(requests) | ledger − engine (with adjustments) | adjustment rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        e, before, after = p["engine"], p["difference_before_adjustments"], p["difference_after_adjustments"]
        lines.append(
            f"| {p['abort']:.0%} | {'on' if p['drain_s'] >= 0.5 else 'off'} "
            f"| {'yes' if p['restart'] else 'no'} "
            f"| {p['requests']} | {e['prompt']:,} / {e['cached']:,} / {e['completion']:,} "
            f"| {before['prompt']:+,} / {before['cached']:+,} / {before['completion']:+,} "
            f"| {after['prompt']:+,} / {after['cached']:+,} / {after['completion']:+,} "
            f"| {p['ledger']['adjustments']['rows']} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    tmp = Path(args.work_dir)
    pool = pool_spec("vllm", 1, [], omp_bind="0")
    if "--enable-prompt-tokens-details" not in pool.vllm_args:
        pool = pool.model_copy(update={"vllm_args": [*pool.vllm_args, "--enable-prompt-tokens-details"]})
    phases = []
    async with launched(pool, tmp / "engine-logs") as launcher:
        plan = [(abort, drain) for abort in args.abort for drain in (0.001, 1.0)]
        for i, (abort, drain) in enumerate(plan):
            restart = args.restart and i == len(plan) - 1
            phase = await run_phase(launcher, tmp / f"phase-{i}", args, abort, drain, restart)
            print(orjson.dumps(phase).decode(), flush=True)
            phases.append(phase)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--abort", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--restart", action="store_true", help="restart the engine during the last phase")
    parser.add_argument("--restart-after-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--gateway-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--work-dir", default="/tmp/metering-audit")
    parser.add_argument("--out", default="benchmarks/out/metering_audit.json")
    args = parser.parse_args()
    phases = asyncio.run(main_async(args))
    print(table(phases))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({"phases": phases}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
