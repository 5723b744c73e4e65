"""Chaos: constant streaming load through the gateway while engines are SIGKILLed and restarted.

``--concurrency`` closed-loop workers stream chat completions (three apps' system prompts, sixteen
``user`` names each, ``max_tokens`` drawn from 1 .. 2 x ``--max-tokens`` so the loop never runs
in lockstep). After ``--kill-after`` seconds, as soon as engine 0 has requests in flight, its whole
process group gets SIGKILL; ``EngineLauncher.supervise`` restarts it with backoff; once it answers
``/health`` again the load goes on for ``--after`` seconds, then the next engine is killed, up to
``--kills`` kills. Each request is classified by what reached the client
(``routing_stack.Result.kind``); the target is that none fails before the first byte of its
stream, because the gateway can still send those to another engine. Streams cut part-way end with
an SSE error event: allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.routing_stack import (
    KINDS,
    RUNNING,
    SUCCESS,
    WAITING,
    Result,
    chat_body,
    create_keys,
    gateway,
    gateway_env,
    launched,
    pool_spec,
    scrape,
    stream_chat,
    words,
)
from engines.launcher import EngineLauncher, ManagedEngine
from engines.startup import startup_phase
from tests.support.metrics import total
from tests.support.processes import REPO

# Simulated engines: a long "prefill" next to a short stream, so a kill finds requests both
# waiting for their first token (to be retried elsewhere) and part-way through (to be cut).
SIM_CHAOS_ARGS = ["--ttft-ms", "500", "--itl-ms", "10", "--output-tokens", "64", "--max-model-len", "16384"]
PROGRESS_EVERY_S = 15.0


async def run_chaos(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Start the pool (2 vLLM or 3 simulated engines) and a gateway, then ``chaos_load``."""
    engine: Literal["vllm", "sim"] = args.chaos
    pool = pool_spec(engine, 2 if engine == "vllm" else 3, SIM_CHAOS_ARGS, args.omp_bind)
    shutil.rmtree(log_dir, ignore_errors=True)  # the launcher appends: start each run's logs afresh
    with tempfile.TemporaryDirectory() as name:
        env = gateway_env(Path(name))
        key = create_keys(env, 1)[0]
        async with launched(pool, log_dir) as launcher:
            supervisor = asyncio.create_task(launcher.supervise(poll_s=0.5))
            try:
                async with gateway(env, pool.endpoint_urls(), args.policy, log_dir) as url:
                    results, timeline = await chaos_load(args, url, key, launcher)
            finally:
                supervisor.cancel()  # before the launcher stops: it would restart what it stops
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
    return {
        "timeline": timeline,
        "phases": chaos_phases(results, timeline),
        "logs": str(log_dir.relative_to(REPO)),
        "results": [r.summary() for r in results],
    }


async def chaos_load(
    args: argparse.Namespace, url: str, key: str, launcher: EngineLauncher
) -> tuple[list[Result], dict[str, Any]]:
    """Closed-loop streams through the gateway while ``--kills`` engines, in turn, are killed and
    come back (one at a time)."""
    stop = asyncio.Event()
    results: list[Result] = []
    systems = [f"You are the assistant of app {app}. " + words(random.Random(app), 300) for app in range(3)]

    async def worker(number: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(number)
        await asyncio.sleep(0.1 * number)  # staggered, and lengths vary: no lockstep waves
        while not stop.is_set():
            app, conversation = rng.randrange(3), rng.randrange(16)
            messages = [
                {"role": "system", "content": systems[app]},
                {"role": "user", "content": words(rng, 40)},
            ]
            tokens = rng.randint(1, 2 * args.max_tokens)
            body = chat_body(messages, f"app{app}-conversation{conversation}", tokens)
            results.append(await stream_chat(session, url, key, body))

    kills: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        started = time.perf_counter()
        workers = [asyncio.create_task(worker(n, session)) for n in range(args.concurrency)]
        try:
            for number in range(args.kills):
                await asyncio.sleep(args.after if number else args.kill_after)
                victim = launcher.engines[number % len(launcher.engines)]
                kills.append(await kill_and_wait(args, session, victim, started))
            await asyncio.sleep(args.after)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
        for kill in kills:  # what each restarted engine served since it came back
            engine = next(e for e in launcher.engines if e.command.name == kill["victim"])
            kill["victim_requests_after_restart"] = int(
                (await scrape(session, [engine.command.url]))[0][SUCCESS]
            )
        async with session.get(f"{url}/metrics") as resp:
            gateway_metrics = await resp.text()
    timeline = {
        "kills": kills,
        "gateway_ejections": total(gateway_metrics, "gateway_engine_ejections_total"),
        "gateway_answers_by_status": _by_status(gateway_metrics),
    }
    return results, timeline


async def kill_and_wait(
    args: argparse.Namespace, session: aiohttp.ClientSession, victim: ManagedEngine, started: float
) -> dict[str, Any]:
    """SIGKILL ``victim``'s process group once it has requests in flight; wait until it is back."""
    busy = await wait_busy(session, victim.command.url)
    assert victim.process is not None
    old_pid = victim.process.pid
    killed_at = time.perf_counter()
    os.killpg(old_pid, signal.SIGKILL)
    print(f"SIGKILL {victim.command.name} (pid {old_pid}) at {killed_at - started:.1f} s", flush=True)
    back_s = await wait_restarted(victim, old_pid, args.recover_timeout)
    print(f"{victim.command.name} healthy again {back_s:.1f} s after the kill", flush=True)
    return {
        "victim": victim.command.name,
        "killed_at_s": killed_at - started,
        "back_after_s": back_s,
        "victim_inflight_at_kill": int(busy[RUNNING] + busy[WAITING]),
        "killed_at": killed_at,
        "back_at": killed_at + back_s,
    }


async def wait_busy(session: aiohttp.ClientSession, url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """The engine's metrics once it has requests in flight (the kill should catch some)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        metrics = (await scrape(session, [url]))[0]
        if metrics[RUNNING] + metrics[WAITING] > 0 or time.perf_counter() > deadline:
            return metrics
        await asyncio.sleep(0.05)


async def wait_restarted(engine: ManagedEngine, old_pid: int, timeout_s: float) -> float:
    """Seconds until the supervisor's new process for ``engine`` answers ``/health`` with 200."""
    started = time.perf_counter()
    next_progress = started + PROGRESS_EVERY_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.perf_counter() - started < timeout_s:
            if engine.process is not None and engine.process.pid != old_pid:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{engine.command.url}/health") as resp:
                        if resp.status == 200:
                            return time.perf_counter() - started
            if time.perf_counter() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                waited = time.perf_counter() - started
                phase = startup_phase(engine.recent_log())
                print(f"{engine.command.name} restarting ({waited:.0f} s): {phase}", flush=True)
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{engine.command.name} not back after {timeout_s:.0f} s")


def _by_status(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_requests_total":
                status = sample.labels.get("status", "?")
                counts[status] = counts.get(status, 0) + int(sample.value)
    return counts


def chaos_phases(results: list[Result], timeline: dict[str, Any]) -> list[dict[str, Any]]:
    """Counts by when each request started: while every engine was up, or while one was down
    (from its kill until it answered ``/health`` again)."""
    down = [(k["killed_at"], k["back_at"]) for k in timeline["kills"]]

    def engine_down(result: Result) -> bool:
        return any(killed <= result.started < back for killed, back in down)

    phases = {
        "all engines up": [r for r in results if not engine_down(r)],
        "an engine down (kill → healthy again)": [r for r in results if engine_down(r)],
        "total": results,
    }
    rows = []
    for phase, batch in phases.items():
        counts: dict[str, int] = {kind: sum(1 for r in batch if r.kind == kind) for kind in KINDS}
        errors: dict[str, int] = {}
        for r in batch:
            if r.kind != "ok":
                label = f"{r.kind}: {r.error}"
                errors[label] = errors.get(label, 0) + 1
        rows.append({"phase": phase, "requests": len(batch), **counts, "errors": errors})
    return rows


def chaos_table(report: dict[str, Any]) -> tuple[str, str]:
    lines = [
        "| requests started | requests | ok | failed before any stream byte | cut mid-stream |",
        "|---|--:|--:|--:|--:|",
    ]
    for p in report["phases"]:
        lines.append(
            f"| {p['phase']} | {p['requests']} | {p['ok']} | {p['failed_before_stream']} "
            f"| {p['cut_mid_stream']} |"
        )
    lines += [
        "",
        "| kill | engine | at s | requests in flight on it | healthy again after s | "
        "requests it served after |",
        "|--:|---|--:|--:|--:|--:|",
    ]
    for number, k in enumerate(report["timeline"]["kills"], 1):
        lines.append(
            f"| {number} | {k['victim']} | {k['killed_at_s']:.1f} | {k['victim_inflight_at_kill']} "
            f"| {k['back_after_s']:.1f} | {k['victim_requests_after_restart']} |"
        )
    total_row = report["phases"][-1]
    failed = total_row["failed_before_stream"]
    verdict = (
        f"{'PASS' if failed == 0 else 'FAIL'}: {failed} of {total_row['requests']} requests failed before "
        f"any byte of their stream reached the client (target 0); {total_row['cut_mid_stream']} streams "
        f"were cut part-way; {len(report['timeline']['kills'])} kill(s), every engine came back."
    )
    return "\n".join(lines), verdict
