"""The fault benchmark's recovery scenarios (``benchmarks/faults.py``): a PostgreSQL outage under
load, kill -9 of ``gateway up`` and its next start, and a vLLM engine's restart time by phase."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from benchmarks.fault_stack import (
    PROMPT,
    GatewayHandle,
    Report,
    client_session,
    descendants,
    gateway,
    gateway_env,
    kill_all,
    postgres_counts,
    sim_args,
    start_up,
    up_config,
    wait_gone,
)
from benchmarks.routing_chaos import wait_restarted
from benchmarks.routing_stack import MODEL, chat_body, free_ports, launched, pool_spec, stream_chat
from engines.launcher import EngineLauncher
from engines.process import port_taken
from engines.startup import phase_times
from tests.support.postgres import postgres_ctl, postgres_url, temporary_schema
from tests.support.processes import free_port

# --- PostgreSQL outage ------------------------------------------------------------------------


async def pg_outage(args: argparse.Namespace, work: Path) -> Report:
    try:
        with psycopg.connect(postgres_url(), connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        raise SystemExit(f"--pg-outage needs the local PostgreSQL at {postgres_url()}: {exc}") from exc
    pool = pool_spec(args.engine, 1, sim_args(args))
    async with (
        temporary_schema("faults") as url,
        launched(pool, work / "engine-logs") as _,
        gateway(work / "gateway", pool.endpoint_urls(), args.gateway_cpu, gateway_env(args), url) as gw,
    ):
        return [await outage_under_load(args, gw, url)]


async def outage_under_load(args: argparse.Namespace, gw: GatewayHandle, url: str) -> dict[str, Any]:
    known, fresh = gw.new_key("steady"), gw.new_key("never-seen")
    answers: list[tuple[float, int, str]] = []  # (sent at, status, request id)
    stop = asyncio.Event()
    async with client_session() as session:
        await one_request(session, gw.url, known, answers)  # the key is cached, the pool connected
        load = asyncio.create_task(open_loop(session, gw.url, known, args.rate, stop, answers))
        await asyncio.sleep(args.outage_lead_s)
        stopped = time.perf_counter()
        await asyncio.to_thread(postgres_ctl, "stop")
        try:
            probe: list[tuple[float, int, str]] = []
            retry_after = await one_request(session, gw.url, fresh, probe)
            peak = await watch_backlog(session, gw, stopped + args.outage_s)
        finally:
            await asyncio.to_thread(postgres_ctl, "start")
        returned = time.perf_counter()
        stop.set()
        await load
        held = [i for sent, status, i in answers if status == 200 and sent < returned]
        replay_s = await wait_replayed(session, gw, url, held, returned)
        after: list[tuple[float, int, str]] = []
        await asyncio.gather(*(one_request(session, gw.url, known, after) for _ in range(10)))
    ids = [i for _, status, i in answers + after if status == 200]
    rows, distinct = await wait_rows(url, ids)
    during = [status for sent, status, _ in answers if stopped <= sent < returned]
    return {
        "outage_s": round(returned - stopped, 1),
        "requests": len(answers),
        "during_outage": len(during),
        "during_outage_statuses": dict(Counter(str(s) for s in during)),
        "never_seen_key": f"{probe[0][1]} Retry-After: {retry_after}",
        "backlog_peak_rows": int(peak),
        "replay_s": replay_s,
        "after_return_200": sum(status == 200 for _, status, _ in after),
        "rows_expected": len(set(ids)),
        "rows_lost": len(set(ids)) - distinct,
        "duplicates": rows - distinct,
    }


async def one_request(
    session: aiohttp.ClientSession, url: str, key: str, answers: list[tuple[float, int, str]]
) -> str | None:
    """One short chat completion; appends (sent at, status, request id); returns Retry-After."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    sent = time.perf_counter()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            await response.read()
            answers.append((sent, response.status, response.headers.get("x-request-id", "")))
            return response.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError):
        answers.append((sent, 0, ""))
        return None


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    rate: float,
    stop: asyncio.Event,
    answers: list[tuple[float, int, str]],
) -> None:
    """``rate`` requests a second until ``stop``; waits for those in flight."""
    tasks = []
    while not stop.is_set():
        tasks.append(asyncio.create_task(one_request(session, url, key, answers)))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)


async def watch_backlog(session: aiohttp.ClientSession, gw: GatewayHandle, until: float) -> float:
    """The ledger backlog's peak (rows) until ``until`` (perf_counter)."""
    peak = 0.0
    while time.perf_counter() < until:
        peak = max(peak, await gw.metric(session, "gateway_ledger_backlog_rows"))
        await asyncio.sleep(min(1.0, max(0.0, until - time.perf_counter())))
    return peak


async def wait_replayed(
    session: aiohttp.ClientSession, gw: GatewayHandle, url: str, held: list[str], returned: float
) -> float | None:
    """Seconds from the database's return until the backlog is 0 and the rows held are in it."""
    while time.perf_counter() - returned < 120:
        backlog = await gw.metric(session, "gateway_ledger_backlog_rows")
        with contextlib.suppress(psycopg.OperationalError):
            if backlog == 0 and (await postgres_counts(url, held))[1] == len(set(held)):
                return round(time.perf_counter() - returned, 2)
        await asyncio.sleep(0.05)
    return None


async def wait_rows(url: str, ids: list[str], timeout_s: float = 60) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while (counts := await postgres_counts(url, ids))[1] < len(set(ids)) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return counts


def pg_outage_table(rows: Report) -> str:
    lines = [
        "| outage s | requests | sent during outage (statuses) | never-seen key | backlog peak rows "
        "| return → replay done s | rows lost | duplicates |",
        "|--:|--:|---|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        statuses = ", ".join(f"{n} × {s}" for s, n in sorted(r["during_outage_statuses"].items()))
        lines.append(
            f"| {r['outage_s']} | {r['requests']} | {r['during_outage']} ({statuses}) "
            f"| {r['never_seen_key']} | {r['backlog_peak_rows']} | {r['replay_s']} "
            f"| {r['rows_lost']} of {r['rows_expected']} "
            f"| {r['duplicates']} |"
        )
    return "\n".join(lines)


# --- gateway kill -9 under `gateway up` -------------------------------------------------------


async def gateway_kill(args: argparse.Namespace, work: Path) -> Report:
    engine_port, port = free_ports(args.up_replicas), free_port()
    config = up_config(work, args.engine, args.up_replicas, engine_port)
    first = await asyncio.to_thread(start_up, work, config, port, "up-1")
    tree: list[int] = []
    second_tree: list[int] = []
    try:
        served_first = await burst(first.url, first.key, 8)
        tree = descendants(first.process.popen.pid)
        os.kill(first.process.popen.pid, signal.SIGKILL)  # no cleanup of its own
        await asyncio.to_thread(first.process.popen.wait, 10)
        left, gone_s = await asyncio.to_thread(wait_gone, tree, 60)
        ports = range(engine_port, engine_port + args.up_replicas)
        taken = [p for p in ports if port_taken("127.0.0.1", p)]
        second = await asyncio.to_thread(start_up, work, config, port, "up-2")
        try:
            served_second = await burst(second.url, second.key, 8)
            second_tree = descendants(second.process.popen.pid)
            log = second.process.log_path.read_text(errors="replace")
        finally:
            second.process.signal(signal.SIGINT)  # Ctrl-C: the graceful stop
            await asyncio.to_thread(second.process.popen.wait, 60)
            second.process.stop()
        left_after_stop, _ = await asyncio.to_thread(wait_gone, second_tree, 60)
    finally:
        first.process.stop()
        kill_all(tree + second_tree)
    return [
        {
            "engine": args.engine,
            "engines": args.up_replicas,
            "first_ready_s": round(first.ready_s, 1),
            "first_served": f"{served_first.count(200)}/{len(served_first)}",
            "processes_under_up": len(tree),
            "orphans_left": len(left),
            "engines_gone_after_s": round(gone_s, 2),
            "engine_ports_still_taken": len(taken),
            "next_ready_s": round(second.ready_s, 1),
            "next_served": f"{served_second.count(200)}/{len(served_second)}",
            "next_reused_processes": len(set(second_tree) & set(tree)),
            "next_error_lines": [line for line in log.splitlines() if line.startswith("error:")],
            "left_after_ctrl_c": len(left_after_stop),
        }
    ]


async def burst(url: str, key: str, count: int) -> list[int]:
    body = chat_body([{"role": "user", "content": PROMPT}], None, 4)
    async with client_session() as session:
        results = await asyncio.gather(*(stream_chat(session, url, key, body) for _ in range(count)))
    return [200 if r.kind == "ok" else r.status for r in results]


def gateway_kill_table(rows: Report) -> str:
    lines = [
        "| engine | engines | first start ready s | processes under `gateway up` | left after its kill -9 "
        "| all gone after s | engine ports still taken | next `gateway up` ready s | it serves "
        "| stray processes after its Ctrl-C |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['engines']} | {r['first_ready_s']} | {r['processes_under_up']} "
            f"| {r['orphans_left']} | {r['engines_gone_after_s']} | {r['engine_ports_still_taken']} "
            f"| {r['next_ready_s']} | {r['next_served']} "
            f"| {r['left_after_ctrl_c']} |"
        )
    return "\n".join(lines)


# --- engine restart time (vLLM) ---------------------------------------------------------------


async def restart_time(args: argparse.Namespace, work: Path) -> Report:
    if args.engine != "vllm":
        raise SystemExit("--restart-time measures a vLLM engine's start: add --engine vllm")
    pool = pool_spec("vllm", 1, [])
    async with launched(pool, work / "engine-logs") as launcher:
        supervisor = asyncio.create_task(launcher.supervise())
        try:
            return [await restart_once(args, launcher, n + 1) for n in range(args.restarts)]
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor


async def restart_once(args: argparse.Namespace, launcher: EngineLauncher, number: int) -> dict[str, Any]:
    engine = launcher.engines[0]
    url = engine.command.url
    async with asyncio.timeout(args.recover_timeout):
        while not engine.ready:  # the supervisor saw the last restart through: no race with it
            await asyncio.sleep(0.1)
    await first_completion(url)  # serving before the kill
    assert engine.process is not None
    old_pid = engine.process.pid
    killed_wall = datetime.now().replace(microsecond=0)  # the log's own resolution
    killed = time.perf_counter()
    os.killpg(old_pid, signal.SIGKILL)
    health_s = await wait_restarted(engine, old_pid, args.recover_timeout)
    await first_completion(url)
    first_s = time.perf_counter() - killed
    marks = phase_times(engine.recent_log())
    after_kill = {m.phase: (m.at - killed_wall).total_seconds() for m in marks}
    # Each step lasts until the next begins: the first is the supervisor noticing and its backoff.
    steps = [("kill → new process", 0.0), *after_kill.items(), ("/health 200", health_s)]
    steps.append(("first completion", first_s))
    durations = {phase: round(nxt - at, 1) for (phase, at), (_, nxt) in zip(steps, steps[1:], strict=False)}
    return {
        "kill": number,
        "phases_after_kill_s": after_kill,
        "health_s": round(health_s, 1),
        "first_completion_s": round(first_s, 1),
        "phase_durations_s": durations,
        "longest_phase": max(durations, key=lambda p: durations[p]) if durations else None,
    }


async def first_completion(url: str) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    async with client_session() as session, session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        await response.read()


def restart_time_table(rows: Report) -> str:
    phases = list(rows[0]["phases_after_kill_s"]) if rows else []
    lines = [
        "| kill | " + " | ".join(phases) + " | /health 200 | first completion | longest phase |",
        "|--:|" + "--:|" * (len(phases) + 2) + "---|",
    ]
    for r in rows:
        after = r["phases_after_kill_s"]
        cells = " | ".join(f"{after[p]:.0f}" if p in after else "-" for p in phases)
        longest = r["longest_phase"]
        lines.append(
            f"| {r['kill']} | {cells} | {r['health_s']} | {r['first_completion_s']} "
            f"| {longest} ({r['phase_durations_s'].get(longest, 0)} s) |"
        )
    return "\n".join(lines)
