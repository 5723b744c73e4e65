"""What the gateway adds: the same load straight to the simulated engine, then through the gateway.

Every scenario runs twice with the same load generator process and the same request bytes: first
direct to the engine, then through the gateway (auth and metering on, one worker process). Added
latency is a percentile through the gateway minus the same percentile direct; the gateway's CPU
time per request comes from its process's CPU counters around each gateway phase.

    .venv/bin/python -m benchmarks.overhead                 # the full run (about 3 minutes)
    .venv/bin/python -m benchmarks.overhead --quick         # a smoke run (about 15 s)
    .venv/bin/python -m benchmarks.overhead --workers 2     # gateway serve --workers 2 (uses Redis)

With ``--workers`` the gateway's CPU counts every worker process; more than one needs Redis
(``--redis-url``, default ``$GATEWAY_TEST_REDIS_URL`` or the local one). To compare 1 and 2 workers
on the same footing, give the one-worker run ``--redis-url`` too.

Results: a Markdown table on stdout and JSON in ``benchmarks/out/overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from benchmarks.stack import MODEL, GatewayOptions, Stack, cpu_seconds, running_stack
from tests.support.processes import REPO
from tests.support.redis import delete_prefix, redis_url

SHORT_TOKENS = 16  # the overhead runs: a short answer, so the engine is never the bottleneck
LONG_TOKENS = 256  # the relay-rate run: long streams
DEFAULT_OUT = REPO / "benchmarks" / "out" / "overhead.json"


@dataclass(frozen=True)
class Scenario:
    """One load shape: closed loop at a concurrency, or open loop at a rate."""

    name: str
    mode: str  # "closed" or "open"
    level: int  # concurrency (closed) or requests per second (open)
    stream: bool
    max_tokens: int = SHORT_TOKENS


@dataclass(frozen=True)
class Timing:
    duration_s: float  # measured window of a closed-loop phase
    open_duration_s: float  # measured window of an open-loop phase (more, for its p99)
    warmup_s: float  # run before each window, not recorded
    settle_s: float  # after a phase, so the ledger writer's last batch is in the CPU count


FULL = Timing(duration_s=5.0, open_duration_s=10.0, warmup_s=0.5, settle_s=0.2)
QUICK = Timing(duration_s=0.25, open_duration_s=0.4, warmup_s=0.1, settle_s=0.05)


def scenarios() -> list[Scenario]:
    found: list[Scenario] = []
    for stream in (False, True):
        kind = "stream" if stream else "json"
        found += [Scenario(f"{kind} closed c={c}", "closed", c, stream) for c in (1, 16, 64)]
        found += [Scenario(f"{kind} open {r}/s", "open", r, stream) for r in (100, 300)]
    found.append(Scenario(f"stream closed c=16 {LONG_TOKENS} tokens", "closed", 16, True, LONG_TOKENS))
    return found


def build_request(api_key: str, stream: bool, max_tokens: int) -> str:
    """The exact bytes of one chat request (latin-1 text), as the OpenAI SDK would send them."""
    payload: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a short note."}],
        "max_tokens": max_tokens,
    }
    if stream:
        payload |= {"stream": True, "stream_options": {"include_usage": True}}
    body = orjson.dumps(payload).decode()
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )


class LoadGenerator:
    """``benchmarks.loadgen`` in its own process: one JSON phase in, one JSON result out."""

    def __init__(self) -> None:
        self._popen = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen"],
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run(self, phase: dict[str, Any]) -> dict[str, Any]:
        assert self._popen.stdin is not None and self._popen.stdout is not None
        self._popen.stdin.write(orjson.dumps(phase).decode() + "\n")
        self._popen.stdin.flush()
        line = self._popen.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited")
        result: dict[str, Any] = orjson.loads(line)
        if "failure" in result:
            raise RuntimeError(f"load generator: {result['failure']}")
        return result

    def close(self) -> None:
        if self._popen.stdin is not None:
            self._popen.stdin.close()
        try:
            self._popen.wait(10)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(5)


def measure(
    loadgen: LoadGenerator, stack: Stack, scenario: Scenario, via_gateway: bool, timing: Timing
) -> dict[str, Any]:
    """One phase against one target, with the gateway's and the engine's CPU per request."""
    request = build_request(stack.api_key, scenario.stream, scenario.max_tokens)
    phase = {
        "host": "127.0.0.1",
        "port": stack.gateway_port if via_gateway else stack.engine_port,
        "request": request,
        "mode": scenario.mode,
        "warmup_s": timing.warmup_s,
        "duration_s": timing.duration_s if scenario.mode == "closed" else timing.open_duration_s,
    }
    phase["concurrency" if scenario.mode == "closed" else "rate"] = scenario.level
    pids = {"gateway": stack.gateway_pid, "engine": stack.engine_pid}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = loadgen.run(phase)
    time.sleep(timing.settle_s)
    served = max(result["served"], 1)
    for name, pid in pids.items():
        cpu_s = cpu_seconds(pid) - before[name]
        result[f"{name}_cpu_ms_per_request"] = 1000 * cpu_s / served
        if result["served_events"]:
            result[f"{name}_cpu_us_per_event"] = 1e6 * cpu_s / result["served_events"]
    return result


def compare(direct: dict[str, Any], gateway: dict[str, Any]) -> dict[str, float]:
    """Gateway minus direct, per latency percentile (milliseconds)."""
    return {q: round(gateway["latency_ms"][q] - direct["latency_ms"][q], 4) for q in ("p50", "p90", "p99")}


def run_all(stack: Stack, timing: Timing, selected: list[Scenario]) -> list[dict[str, Any]]:
    loadgen = LoadGenerator()
    try:
        for via_gateway in (False, True):  # warm both paths: connections, auth cache, code paths
            for stream in (False, True):
                warm = Scenario("warm-up", "closed", 16, stream)
                measure(loadgen, stack, warm, via_gateway, Timing(timing.warmup_s * 2, 0, 0, 0))
        rows = []
        for scenario in selected:
            direct = measure(loadgen, stack, scenario, False, timing)
            gateway = measure(loadgen, stack, scenario, True, timing)
            added = compare(direct, gateway)
            rows.append({**asdict(scenario), "direct": direct, "gateway": gateway, "added_ms": added})
            print(f"  {scenario.name}: done", file=sys.stderr, flush=True)
        return rows
    finally:
        loadgen.close()


def _row(name: str, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((row for row in rows if row["name"] == name), None)


def _check(target: str, value: float, limit: float, higher_is_better: bool = False) -> dict[str, Any]:
    met = value >= limit if higher_is_better else value <= limit
    return {"target": target, "value": round(value, 3), "limit": limit, "met": met}


def _cpu_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CPU per request under load (what sets capacity), and where the rate is fixed."""
    checks = []
    closed = [row for row in rows if not row["stream"] and row["mode"] == "closed"]
    if closed:
        worst = max(closed, key=lambda row: row["gateway"]["gateway_cpu_ms_per_request"])
        value = worst["gateway"]["gateway_cpu_ms_per_request"]
        checks.append(_check(f"CPU ms/request, worst JSON closed loop ({worst['name']})", value, 0.5))
    for name in ("json open 300/s", "stream closed c=16"):
        row = _row(name, rows)
        if row is not None:
            value = row["gateway"]["gateway_cpu_ms_per_request"]
            checks.append(_check(f"CPU ms/request, {name}", value, 0.5))
    return checks


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the issue, checked against the scenarios that measure it."""
    checks = _cpu_checks(rows)
    closed = [row for row in rows if not row["stream"] and row["mode"] == "closed"]
    if closed:
        best = max(closed, key=lambda row: row["gateway"]["rps"])
        checks.append(_check(f"requests/s ({best['name']})", best["gateway"]["rps"], 2000, True))
    for kind in ("json", "stream"):
        for name, p50, p99 in ((f"{kind} closed c=1", 1.0, 2.0), (f"{kind} open 300/s", 1.0, 3.0)):
            row = _row(name, rows)
            if row is not None:
                checks.append(_check(f"added p50 ms, {name}", row["added_ms"]["p50"], p50))
                checks.append(_check(f"added p99 ms, {name}", row["added_ms"]["p99"], p99))
    long_row = _row(f"stream closed c=16 {LONG_TOKENS} tokens", rows)
    if long_row is not None:
        checks.append(_check("chunks/s relayed", long_row["gateway"]["events_per_s"], 30_000, True))
    return checks


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, so a run can be pasted into RESULTS.md as printed."""
    lines = [
        "| scenario | direct req/s | gateway req/s | direct p50 / p99 ms | gateway p50 / p99 ms "
        "| added p50 / p99 ms | gateway CPU ms/req | chunks/s via gateway |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        direct, gateway, added = row["direct"], row["gateway"], row["added_ms"]
        chunks = f"{gateway['events_per_s']:,.0f}" if row["stream"] else "–"
        lines.append(
            f"| {row['name']} | {direct['rps']:,.0f} | {gateway['rps']:,.0f} "
            f"| {direct['latency_ms']['p50']:.2f} / {direct['latency_ms']['p99']:.2f} "
            f"| {gateway['latency_ms']['p50']:.2f} / {gateway['latency_ms']['p99']:.2f} "
            f"| {added['p50']:.2f} / {added['p99']:.2f} | {gateway['gateway_cpu_ms_per_request']:.3f} "
            f"| {chunks} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What else was running matters on 2 cores: the load and any vLLM engine are recorded."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commands = (" ".join(p.info["cmdline"] or ()) for p in psutil.process_iter(["cmdline"]))
    vllm = sum("vllm.entrypoints" in command for command in commands)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "vllm_processes": vllm,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, help="seconds per closed-loop phase (open loop: twice)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every scenario")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--only", help="run the scenarios whose name contains this text")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument(
        "--redis-url",
        help="the limiter's Redis (default: none for 1 worker, $GATEWAY_TEST_REDIS_URL for more)",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def gateway_options(workers: int, redis: str | None) -> Iterator[GatewayOptions]:
    """The gateway's workers and Redis, under a key prefix of its own that is deleted afterwards."""
    if redis is None and workers > 1:
        redis = redis_url()
    options = GatewayOptions(workers, redis, f"bench-overhead-{secrets.token_hex(4)}:")
    try:
        yield options
    finally:
        if redis is not None:
            asyncio.run(delete_prefix(options.redis_prefix))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timing = QUICK if args.quick else FULL
    if args.duration:
        timing = Timing(args.duration, 2 * args.duration, timing.warmup_s, timing.settle_s)
    selected = [s for s in scenarios() if not args.only or args.only in s.name]
    started = datetime.datetime.now(datetime.UTC)
    before = machine()
    with (
        tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp,
        gateway_options(args.workers, args.redis_url) as options,
        running_stack(Path(tmp), output_tokens=LONG_TOKENS, options=options) as stack,
    ):
        rows = run_all(stack, timing, selected)
    checks = verdicts(rows)
    report = {
        "command": " ".join(["python -m benchmarks.overhead", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": started.isoformat(timespec="seconds"),
        "timing": asdict(timing),
        "gateway": {"workers": options.workers, "redis": options.redis_url is not None},
        "machine_before": before,
        "machine_after": machine(),
        "scenarios": rows,
        "targets": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(table(rows))
    print()
    for check in checks:
        verdict = "met    " if check["met"] else "NOT MET"
        print(f"{verdict}  {check['target']}: {check['value']} (limit {check['limit']})")
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
