"""Faults a client should not see (issue 19), measured against real processes: the gateway
(pinned to one CPU), engines started by the launcher (simulated by default, ``--engine vllm``:
the tiny model on vLLM CPU engines), ``gateway up``, and the local PostgreSQL.

    python -m benchmarks.faults                             # overload, engine kill, gateway kill
    python -m benchmarks.faults --overload --engine vllm
    python -m benchmarks.faults --pg-outage                 # stops the local PostgreSQL ~30 s
    python -m benchmarks.faults --restart-time --engine vllm

Scenarios (each prints a markdown table and goes into the JSON written to ``--out``):

- ``--overload``: waves of ``--streams`` long streams at once on one engine, ``--gap-s`` apart
  (around the engine's 5 s keep-alive, so pooled connections are closed as the next wave takes
  them), by a tenant limited to ``--tenant-limit`` requests in flight and by one without a limit:
  answers 200 (whole stream), 429, 503, other. Target: no 503.
- ``--engine-kill``: closed-loop streams while engine 0 of a pool of 1, then 2 engines gets
  SIGKILL; the launcher's supervisor restarts it and drains/resumes it in the gateway through the
  admin API (as ``python -m engines --gateway`` does; ``gateway up`` does the same in-process).
  Errors before the first byte, streams cut part-way (tokens the client saw vs the ledger billed),
  when the pool served a first token again, how long the requests that met the outage waited.
- ``--pg-outage``: open-loop load while PostgreSQL is stopped for ``--outage-s``: requests served
  meanwhile, a never-seen key's answer, rows lost and duplicated, seconds from the database's
  return until the ledger's backlog is written.
- ``--gateway-kill``: ``gateway up`` with a pool of engines, kill -9 of its process: engines left
  behind, then the next ``gateway up`` on the same ports: time to ready, and whether it serves.
- ``--restart-time`` (vLLM only): kill -9 of a tiny-model engine under the launcher's supervisor,
  to ``/health`` and a first completion, broken down by the phases its log shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.fault_recovery import (
    gateway_kill,
    gateway_kill_table,
    pg_outage,
    pg_outage_table,
    restart_time,
    restart_time_table,
)
from benchmarks.fault_stack import (
    ADMIN_TOKEN,
    PROMPT,
    GatewayHandle,
    Report,
    client_session,
    gateway,
    gateway_env,
    ledger_rows,
    sim_args,
)
from benchmarks.routing_chaos import kill_and_wait
from benchmarks.routing_stack import Result, chat_body, launched, pool_spec, stream_chat, words
from engines.launcher import EngineLauncher, GatewayAdminDrain


def answer(result: Result) -> str:
    """How a request ended, as the overload table counts it."""
    if result.kind == "ok":
        return "200"
    return str(result.status) if result.status in (429, 503) else "other"


def seconds(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


# --- 1. overload ---------------------------------------------------------------------------------


async def overload(args: argparse.Namespace, work: Path) -> Report:
    pool = pool_spec(args.engine, 1, sim_args(args))
    async with (
        launched(pool, work / "engine-logs") as _,
        gateway(work / "gateway", pool.endpoint_urls(), args.gateway_cpu, gateway_env(args)) as gw,
    ):
        rows = []
        for limit in (args.tenant_limit, None):
            key = gw.new_key(f"limit-{limit or 'none'}", limit)
            marked_down = gw.process.log_path.read_text().count("is DOWN")
            rows.append(await overload_waves(args, gw, key, limit))
            rows[-1]["engine_marked_down"] = gw.process.log_path.read_text().count("is DOWN") - marked_down
    return rows


async def overload_waves(
    args: argparse.Namespace, gw: GatewayHandle, key: str, limit: int | None
) -> dict[str, Any]:
    """``--waves`` waves of ``--streams`` streams at once, one tenant; what each wave got."""
    body = chat_body([{"role": "user", "content": PROMPT}], None, args.max_tokens)
    waves: list[dict[str, int]] = []
    others: Counter[str] = Counter()
    async with client_session() as session:
        ejections = await gw.metric(session, "gateway_engine_ejections_total")
        for wave in range(args.waves):
            results = await asyncio.gather(
                *(stream_chat(session, gw.url, key, body) for _ in range(args.streams))
            )
            waves.append(dict(Counter(answer(r) for r in results)))
            others.update(str(r.error)[:120] for r in results if answer(r) == "other")
            if wave < args.waves - 1:  # gaps straddle the engine's 5 s keep-alive
                await asyncio.sleep(max(0.0, args.gap_s - 0.2 + 0.1 * (wave % 5)))
        ejections = await gw.metric(session, "gateway_engine_ejections_total") - ejections
    counts = Counter[str]()
    for wave_counts in waves:
        counts.update(wave_counts)
    return {
        "tenant_limit": limit,
        "waves": args.waves,
        "requests": args.waves * args.streams,
        **{status: counts[status] for status in ("200", "429", "503", "other")},
        "engine_ejections": int(ejections),
        "per_wave": waves,
        "other_errors": dict(others),
    }


def overload_table(rows: Report) -> str:
    lines = [
        "| tenant limit | waves × streams | 200 | 429 | 503 | other | engine ejections |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        limit = r["tenant_limit"] or "none"
        lines.append(
            f"| {limit} | {r['waves']} × {r['requests'] // r['waves']} | {r['200']} | {r['429']} "
            f"| {r['503']} | {r['other']} | {r['engine_ejections']} |"
        )
    return "\n".join(lines)


# --- 2. engine kill -9 under load ----------------------------------------------------------------


async def engine_kill(args: argparse.Namespace, work: Path) -> Report:
    return [await engine_kill_pool(args, work / f"engines-{n}", n) for n in args.replicas]


async def engine_kill_pool(args: argparse.Namespace, work: Path, replicas: int) -> dict[str, Any]:
    """A pool of ``replicas`` engines under supervision, a gateway over it, load, one kill."""
    pool = pool_spec(args.engine, replicas, sim_args(args, ttft_ms=500))
    async with launched(pool, work / "engine-logs") as launcher:
        supervisor: asyncio.Task[None] | None = None
        try:
            async with gateway(
                work / "gateway", pool.endpoint_urls(), args.gateway_cpu, gateway_env(args)
            ) as gw:
                key = gw.new_key("steady")
                launcher.drain_hook = GatewayAdminDrain([gw.url], ADMIN_TOKEN)
                supervisor = asyncio.create_task(launcher.supervise())
                results, kill = await load_through_kill(args, gw.url, key, launcher)
                await asyncio.sleep(args.settle_s)  # the ledger's last batch
                billed = ledger_rows(gw.database())
        finally:
            if supervisor is not None:  # before the launcher stops: it would restart what it stops
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
    return kill_report(replicas, results, kill, billed)


async def load_through_kill(
    args: argparse.Namespace, url: str, key: str, launcher: EngineLauncher
) -> tuple[list[Result], dict[str, Any]]:
    """``--concurrency`` closed-loop streams; after ``--kill-after`` s engine 0 is killed (once
    it has requests in flight); the load goes on ``--after`` s past its return."""
    stop = asyncio.Event()
    results: list[Result] = []

    async def worker(number: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(number)
        await asyncio.sleep(0.05 * number)
        while not stop.is_set():
            messages = [{"role": "user", "content": words(rng, 20)}]
            body = chat_body(messages, f"user{number}", rng.randint(1, args.max_tokens))
            results.append(await stream_chat(session, url, key, body))

    async with client_session() as session:
        started = time.perf_counter()
        workers = [asyncio.create_task(worker(n, session)) for n in range(args.concurrency)]
        try:
            await asyncio.sleep(args.kill_after)
            kill = await kill_and_wait(args, session, launcher.engines[0], started)
            await asyncio.sleep(args.after)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
    return results, kill


def first_answer_at(result: Result) -> float:
    """When the client got its first token, or else its answer (an error, the end)."""
    return result.started + (result.ttft_s if result.ttft_s is not None else result.latency_s)


def kill_report(
    replicas: int, results: list[Result], kill: dict[str, Any], billed: dict[str, tuple[int, str]]
) -> dict[str, Any]:
    killed, back = kill["killed_at"], kill["back_at"]
    # Requests without a token yet when the engine died, or started before it was back.
    met = [r for r in results if r.started < back and first_answer_at(r) > killed]
    waits = [first_answer_at(r) - max(r.started, killed) for r in met if r.kind == "ok"]
    served_again = [
        first_answer_at(r) - killed for r in results if r.kind == "ok" and first_answer_at(r) > killed
    ]
    cuts = [r for r in results if r.kind == "cut_mid_stream"]
    failed = [r for r in results if r.kind == "failed_before_stream"]
    with_ids = [r.request_id for r in results if r.request_id]
    return {
        "engines": replicas,
        "requests": len(results),
        "ok": sum(r.kind == "ok" for r in results),
        "failed_before_first_byte": len(failed),
        "cut_mid_stream": len(cuts),
        "cut_tokens_seen": sum(r.content_events for r in cuts),
        "cut_tokens_billed": sum(billed.get(r.request_id or "", (0, ""))[0] for r in cuts),
        "cut_outcomes": dict(Counter(billed.get(r.request_id or "", (0, "missing"))[1] for r in cuts)),
        "ledger_rows_missing": sum(i not in billed for i in with_ids),
        "engine_back_s": round(kill["back_after_s"], 2),
        "first_token_after_kill_s": round(min(served_again), 2) if served_again else None,
        "met_outage": len(met),
        "met_outage_wait_s": seconds(waits),
        "victim_inflight_at_kill": kill["victim_inflight_at_kill"],
        "errors": dict(Counter(str(r.error)[:120] for r in failed + cuts)),
    }


def engine_kill_table(rows: Report) -> str:
    lines = [
        "| engines | requests | ok | failed before first byte | cut mid-stream | cut: tokens seen / billed "
        "| ledger rows missing | engine back after s | first token after kill s | requests that met the "
        "outage | their wait p50 / max s |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        wait = r["met_outage_wait_s"]
        lines.append(
            f"| {r['engines']} | {r['requests']} | {r['ok']} | {r['failed_before_first_byte']} "
            f"| {r['cut_mid_stream']} | {r['cut_tokens_seen']} / {r['cut_tokens_billed']} "
            f"| {r['ledger_rows_missing']} | {r['engine_back_s']} | {r['first_token_after_kill_s']} "
            f"| {r['met_outage']} | {wait['p50']} / {wait['max']} |"
        )
    return "\n".join(lines)


# --- the command line ----------------------------------------------------------------------------

Scenario = Callable[[argparse.Namespace, Path], Awaitable[Report]]
SCENARIOS: dict[str, tuple[Scenario, Callable[[Report], str]]] = {
    "overload": (overload, overload_table),
    "engine_kill": (engine_kill, engine_kill_table),
    "pg_outage": (pg_outage, pg_outage_table),
    "gateway_kill": (gateway_kill, gateway_kill_table),
    "restart_time": (restart_time, restart_time_table),
}
SIM_DEFAULT = ("overload", "engine_kill", "gateway_kill")  # light: minutes on 2 cores


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name in SCENARIOS:
        parser.add_argument(
            f"--{name.replace('_', '-')}", action="store_true", help=f"run the {name} scenario"
        )
    parser.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    parser.add_argument("--gateway-cpu", type=_cpu, default=1 if (os.cpu_count() or 1) > 1 else None)
    parser.add_argument("--gateway-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--max-tokens", type=int, default=100, help="stream length (overload), longest (kill)"
    )
    parser.add_argument("--itl-ms", type=float, default=10.0, help="simulated engine: between tokens")
    load = parser.add_argument_group("overload")
    load.add_argument("--streams", type=int, default=64)
    load.add_argument("--waves", type=int, default=6)
    load.add_argument("--gap-s", type=float, default=5.0, help="between waves (±0.2 s)")
    load.add_argument("--tenant-limit", type=int, default=16)
    kill = parser.add_argument_group("engine kill")
    kill.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    kill.add_argument("--concurrency", type=int, default=8)
    kill.add_argument("--kill-after", type=float, default=5.0)
    kill.add_argument("--after", type=float, default=5.0, help="load past the engine's return")
    kill.add_argument("--recover-timeout", type=float, default=900.0)
    kill.add_argument("--settle-s", type=float, default=2.0)
    outage = parser.add_argument_group("PostgreSQL outage")
    outage.add_argument("--outage-s", type=float, default=30.0)
    outage.add_argument("--outage-lead-s", type=float, default=3.0)
    outage.add_argument("--rate", type=float, default=20.0, help="requests per second")
    up = parser.add_argument_group("gateway kill / restart time")
    up.add_argument("--up-replicas", type=int, default=2)
    up.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/faults-benchmark"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/faults.json"))
    args = parser.parse_args(argv)
    args.scenarios = [n for n in SCENARIOS if getattr(args, n)] or list(SIM_DEFAULT)
    return args


def _cpu(text: str) -> int | None:
    return None if text == "none" else int(text)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.faults", *sys.argv[1:]]),
        "engine": args.engine,
        "gateway_cpu": args.gateway_cpu,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "scenarios": {},
    }
    for name in args.scenarios:
        scenario, table = SCENARIOS[name]
        print(f"== {name} ({args.engine})", flush=True)
        work = args.work_dir / name
        shutil.rmtree(work, ignore_errors=True)  # no journal, ledger or engine log of an earlier run
        work.mkdir(parents=True)
        started = time.monotonic()
        rows = await scenario(args, work)
        report["scenarios"][name] = {"rows": rows, "seconds": round(time.monotonic() - started, 1)}
        print(table(rows), flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
