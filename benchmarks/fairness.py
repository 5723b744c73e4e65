"""Fairness: does one tenant's burst push another tenant's time to first token up?

Two tenants share one saturated pool: a simulated engine (``--ttft-ms 50 --itl-ms 5
--output-tokens 32 --max-num-seqs 8``) behind the gateway. Tenant B streams at a steady low rate
and measures its TTFT; tenant A runs a hard closed loop (``benchmarks.loadgen`` in its own
process). Three runs:

1. ``B alone``: the pool has ``max_inflight_per_engine: 8`` (the fair queue); B's unloaded TTFT.
2. ``B + A burst, fair queue``: the same pool; A's burst waits in A's own line.
3. ``B + A burst, no queue``: ``max_inflight_per_engine`` unset, so every request goes straight to
   the engine, whose own queue is FIFO: B waits behind A's whole burst.

The target: A's burst must not push B's p99 TTFT above 2x its unloaded value.

    .venv/bin/python -m benchmarks.fairness [--seconds 12] [--burst 64]

Writes ``benchmarks/out/fairness.json`` and a "Fairness" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.loadgen import percentile
from benchmarks.overhead import LoadGenerator, build_request
from benchmarks.stack import tenant_key
from tests.support.processes import REPO, Process, free_port

MODEL = "sim-model"
ENGINE_FLAGS = ["--ttft-ms", "50", "--itl-ms", "5", "--output-tokens", "32", "--max-num-seqs", "8"]
MAX_INFLIGHT = 8
TARGET_RATIO = 2.0
OUT = REPO / "benchmarks" / "out" / "fairness.json"
RESULTS = REPO / "benchmarks" / "RESULTS.md"


@contextlib.contextmanager
def gateway(tmp: Path, engine_port: int, fair_queue: bool) -> Iterator[tuple[int, dict[str, str]]]:
    """A gateway over the engine, tenants ``a`` and ``b`` with a key each, no default limits."""
    port = free_port()
    pools = tmp / f"pools-{port}.yaml"
    limit = f"    max_inflight_per_engine: {MAX_INFLIGHT}\n" if fair_queue else ""
    pools.write_text(
        f'pools:\n  - served_name: {MODEL}\n    endpoints: ["http://127.0.0.1:{engine_port}"]\n{limit}'
    )
    env = {
        "GATEWAY_CONFIG_PATH": str(pools),
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp / f'g-{port}.db'}",
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_LIMITS_PATH": str(tmp / "no-limits.yaml"),  # absent: tenants are unlimited
        "GATEWAY_DATA_DIR": str(tmp / f"data-{port}"),
    }
    keys = {tenant: tenant_key(env, tenant) for tenant in ("a", "b")}
    proc = Process([sys.executable, "-m", "gateway.cli", "serve"], tmp / f"gateway-{port}.log", env)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health", 60)
        yield port, keys
    finally:
        proc.stop()


async def _one_ttft(session: aiohttp.ClientSession, url: str, key: str) -> float | None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    t0 = time.perf_counter()
    ttft = None
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        if resp.status != 200:
            return None
        async for line in resp.content:
            if ttft is None and line.startswith(b"data: {"):
                ttft = time.perf_counter() - t0
    return ttft


async def steady_tenant(port: int, key: str, rate: float, seconds: float) -> dict[str, Any]:
    """B: one streamed request every 1/rate s; TTFT of each (errors counted apart)."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_one_ttft(session, url, key)))
        results = await asyncio.gather(*tasks, return_exceptions=True)
    ttfts = sorted(r for r in results if isinstance(r, float))
    return {
        "requests": len(results),
        "errors": len(results) - len(ttfts),
        "ttft_p50_ms": 1000 * percentile(ttfts, 50),
        "ttft_p99_ms": 1000 * percentile(ttfts, 99),
    }


async def one_run(port: int, keys: dict[str, str], args: argparse.Namespace, burst: bool) -> dict[str, Any]:
    loadgen = LoadGenerator() if burst else None
    try:
        if loadgen is not None:
            phase = {
                "host": "127.0.0.1",
                "port": port,
                "request": build_request(keys["a"], False, 32),
                "mode": "closed",
                "concurrency": args.burst,
                "duration_s": args.seconds + 2,
                "warmup_s": 0,
            }
            burster = asyncio.create_task(asyncio.to_thread(loadgen.run, phase))
            await asyncio.sleep(1.0)  # A's burst is in full swing before B starts
        b = await steady_tenant(port, keys["b"], args.rate, args.seconds)
        if loadgen is not None:
            a = await burster
            b["a_requests"], b["a_errors"] = a.get("requests"), a.get("errors")
        return b
    finally:
        if loadgen is not None:
            loadgen.close()


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        engine_port = free_port()
        engine = Process(
            [
                sys.executable,
                "-m",
                "engines.sim",
                "--port",
                str(engine_port),
                "--model",
                MODEL,
                *ENGINE_FLAGS,
                "--log-level",
                "warning",
            ],
            tmp / "engine.log",
        )
        try:
            engine.wait_http(f"http://127.0.0.1:{engine_port}/health", 30)
            for fair in (True, False):
                with gateway(tmp, engine_port, fair) as (port, keys):
                    for burst in (False, True) if fair else (True,):
                        name = ("B + A burst" if burst else "B alone") + (
                            ", fair queue" if fair else ", no queue"
                        )
                        result = asyncio.run(one_run(port, keys, args, burst))
                        rows.append({"run": name, "fair_queue": fair, "burst": burst, **result})
                        print(f"{name}: {result}", flush=True)
        finally:
            engine.stop()
    return rows


def table(rows: list[dict[str, Any]]) -> tuple[str, str]:
    base = rows[0]["ttft_p99_ms"]
    lines = [
        "| run | B requests (errors) | B TTFT p50 ms | B TTFT p99 ms | p99 / unloaded p99 | A requests |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        row["p99_ratio"] = row["ttft_p99_ms"] / base
        lines.append(
            f"| {row['run']} | {row['requests']} ({row['errors']}) | {row['ttft_p50_ms']:.1f} "
            f"| {row['ttft_p99_ms']:.1f} | {row['p99_ratio']:.2f} | {row.get('a_requests', '-')} |"
        )
    fair, unfair = rows[1]["p99_ratio"], rows[2]["p99_ratio"]
    verdict = (
        f"{'PASS' if fair <= TARGET_RATIO else 'FAIL'}: with the fair queue A's burst moves B's p99 TTFT "
        f"{fair:.2f}x its unloaded value (target <= {TARGET_RATIO:g}x); without it, {unfair:.2f}x."
    )
    return "\n".join(lines), verdict


def write_results(args: argparse.Namespace, rows: list[dict[str, Any]], text: str, verdict: str) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(
        orjson.dumps({"args": vars(args), "rows": rows, "verdict": verdict}, option=orjson.OPT_INDENT_2)
    )
    command = (
        f"python -m benchmarks.fairness --seconds {args.seconds:g} --burst {args.burst} --rate {args.rate:g}"
    )
    section = (
        f"## Fairness\n\n`{command}` ({datetime.date.today().isoformat()}; engine: sim "
        f"`{' '.join(ENGINE_FLAGS)}`, pool `max_inflight_per_engine: {MAX_INFLIGHT}`; tenant B streams "
        f"at {args.rate:g} req/s, tenant A runs {args.burst} concurrent requests in a closed loop)\n\n"
        f"{text}\n\n{verdict}\n"
    )
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find("## Fairness\n")
    if start >= 0:
        end = old.find("\n## ", start + 1)
        old = old[:start] + (old[end + 1 :] if end >= 0 else "")
    RESULTS.write_text(old.rstrip("\n") + "\n\n" + section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--rate", type=float, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    rows = run_all(args)
    text, verdict = table(rows)
    print(text + "\n\n" + verdict)
    if not args.no_write:
        write_results(args, rows, text, verdict)
    return 0 if verdict.startswith("PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
