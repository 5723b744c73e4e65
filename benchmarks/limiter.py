"""What rate limiting costs per request: one ``admit`` plus one ``settle``, in microseconds.

Every request is checked against all five limits of its tenant and an RPM limit of its key (the
most work a request can cause), with limits high enough that nothing is refused, spread over
``--tenants`` tenants. Limiters are built by ``create_limiter`` exactly as the gateway builds them:
in-process, and Redis on loopback behind the fail-open policy.

- ``1 caller``: one request at a time; latency is the round trip(s) of one request;
- ``64 callers``: 64 asyncio tasks at once on one event loop, as a busy gateway replica would;
  ``µs/request`` is wall time divided by requests, i.e. the limiter's cost to throughput.

    .venv/bin/python -m benchmarks.limiter            # about 10 s
    .venv/bin/python -m benchmarks.limiter --quick    # a smoke run, a few seconds

Results: a Markdown table on stdout, JSON in ``benchmarks/out/limiter.json``. Redis is
``$GATEWAY_TEST_REDIS_URL`` (default: the local server); the run's keys live under a prefix of
their own and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import redis

from gateway.admission.limits import Limiter, Subject, create_limiter
from gateway.limit_spec import LimitSpec
from tests.support.processes import REPO
from tests.support.redis import redis_url, temporary_prefix

DEFAULT_OUT = REPO / "benchmarks" / "out" / "limiter.json"
TENANT_LIMITS = LimitSpec(
    rpm=10**9, tpm=10**12, max_concurrent=10**6, monthly_tokens=10**15, monthly_cost_pico=10**18
)
KEY_LIMITS = LimitSpec(rpm=10**9)
PROMPT_TOKENS, MAX_TOKENS, USED_TOKENS = 200, 256, 180


@dataclass(frozen=True)
class Result:
    backend: str
    callers: int
    requests: int
    seconds: float
    requests_per_s: float
    us_per_request: float  # wall time / requests
    cpu_us_per_request: float  # this process's CPU time / requests (not Redis's)
    latency_p50_us: float  # admit + settle of one request
    latency_p99_us: float
    latency_max_us: float
    server_us_per_script: float | None = None  # Redis: time inside EVALSHA per call (commandstats)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _request(limiter: Limiter, subject: Subject) -> float:
    """One request's limiter work; its latency in µs."""
    started = time.perf_counter()
    reservation = await limiter.admit(
        subject, TENANT_LIMITS, KEY_LIMITS, tokens=PROMPT_TOKENS + MAX_TOKENS, cost_pico=10**6
    )
    await limiter.settle(reservation, USED_TOKENS, 400_000)
    return (time.perf_counter() - started) * 1e6


async def measure(limiter: Limiter, backend: str, callers: int, requests: int, tenants: int) -> Result:
    subjects = [Subject(f"ten_{i}", f"key_{i}") for i in range(tenants)]
    # Warm up as many at once as will be measured: connections, scripts, every tenant's keys.
    await asyncio.gather(*(_request(limiter, subjects[i % tenants]) for i in range(max(callers, tenants))))
    latencies: list[float] = []

    async def caller(index: int) -> None:
        for n in range(index, requests, callers):
            latencies.append(await _request(limiter, subjects[n % tenants]))

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return Result(
        backend=backend,
        callers=callers,
        requests=requests,
        seconds=round(seconds, 3),
        requests_per_s=round(requests / seconds),
        us_per_request=round(seconds / requests * 1e6, 1),
        cpu_us_per_request=round(cpu_seconds / requests * 1e6, 1),
        latency_p50_us=round(statistics.median(latencies), 1),
        latency_p99_us=round(_percentile(latencies, 0.99), 1),
        latency_max_us=round(max(latencies), 1),
    )


def _evalsha_stats(url: str) -> tuple[int, int]:
    """EVALSHA calls and microseconds spent in them so far, server-wide (other clients count too)."""
    with redis.Redis.from_url(url) as client:
        stats: dict[str, Any] = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def run(args: argparse.Namespace) -> list[Result]:
    results = []
    for callers in args.callers:
        limiter = create_limiter(None, fail_open=True)
        results.append(await measure(limiter, "in-process", callers, args.requests, args.tenants))
    async with temporary_prefix("bench-limiter") as prefix:
        for callers in args.callers:
            limiter = create_limiter(args.redis_url, fail_open=True, prefix=prefix, timeout_s=5)
            try:
                requests = args.requests // args.redis_divisor
                calls, usec = _evalsha_stats(args.redis_url)
                result = await measure(limiter, "redis (loopback)", callers, requests, args.tenants)
                calls_after, usec_after = _evalsha_stats(args.redis_url)
                server_us = round((usec_after - usec) / max(1, calls_after - calls), 1)
                results.append(replace(result, server_us_per_script=server_us))
            finally:
                await limiter.aclose()
    return results


def table(results: list[Result]) -> str:
    """Markdown, so a run can be pasted into RESULTS.md as printed."""
    lines = [
        "| limiter | callers | requests | requests/s | µs/request | client CPU µs/request "
        "| latency p50 µs | p99 µs | max µs | Redis µs/script |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        server = "–" if r.server_us_per_script is None else f"{r.server_us_per_script:,.1f}"
        lines.append(
            f"| {r.backend} | {r.callers} | {r.requests:,} | {r.requests_per_s:,} | {r.us_per_request:,.1f} "
            f"| {r.cpu_us_per_request:,.1f} | {r.latency_p50_us:,.1f} | {r.latency_p99_us:,.1f} "
            f"| {r.latency_max_us:,.1f} | {server} |"
        )
    return "\n".join(lines)


def machine(url: str) -> dict[str, Any]:
    with redis.Redis.from_url(url) as client:
        server: dict[str, Any] = client.info("server")
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis": server.get("redis_version"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limiter", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per in-process scenario")
    parser.add_argument("--redis-divisor", type=int, default=5, help="Redis scenarios run requests / this")
    parser.add_argument("--callers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 64])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--redis-url", default=redis_url())
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 requests")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.tenants = 2_000, 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    results = asyncio.run(run(args))
    report = {
        "command": " ".join(["python -m benchmarks.limiter", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine(args.redis_url),
        "limits": {"tenant": asdict(TENANT_LIMITS), "key": asdict(KEY_LIMITS)},
        "results": [asdict(result) for result in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(table(results))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
