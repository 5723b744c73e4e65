"""How many ledger rows per second each store sustains, and whether reports stay on the index.

Write throughput, on SQLite and on PostgreSQL, under the gateway's write pattern (its
``LedgerWriter`` flushes up to ``ledger_batch_size`` rows every ``ledger_flush_interval_s``):

- ``full batches``: back-to-back batches of 500 fresh rows, the writer's ceiling;
- ``paced``: rows arriving at ``--rate`` per second, flushed every 50 ms as the gateway does,
  to show the writer keeps up and what a flush costs;
- ``single rows``: back-to-back one-row batches, the worst case (one commit per request).

Rows/s of the saturated runs count time spent in ``insert_usage`` only (building the Python rows is
the gateway's cost, not the ledger's); the paced run counts wall time. Then a month of synthetic
rows is loaded into a PostgreSQL schema server-side and the store's own report query for one tenant
is run under ``EXPLAIN (ANALYZE, BUFFERS)``: it must not scan the whole ledger.

    .venv/bin/python -m benchmarks.ledger                      # about 1.5 minutes (10M-row month)
    .venv/bin/python -m benchmarks.ledger --plan-rows 2000000  # a smaller month, about 50 s

Results: a Markdown table and the plan on stdout, JSON in ``benchmarks/out/ledger.json``.
PostgreSQL is ``$GATEWAY_TEST_POSTGRES_URL`` (default: the local server); the benchmark works in
a schema of its own and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import psycopg

from gateway.records import Outcome, UsageRecord
from gateway.settings import Settings
from gateway.store import Store
from gateway.store.postgres import PostgresStore, conninfo, report_query
from gateway.store.sqlite import SqliteStore
from tests.support.postgres import postgres_url, temporary_schema
from tests.support.processes import REPO

DEFAULT_OUT = REPO / "benchmarks" / "out" / "ledger.json"
MONTH_START = datetime.datetime(2026, 10, 1, tzinfo=datetime.UTC).timestamp()
MONTH_END = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC).timestamp()
MODELS = ("llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct", "tiny-llama")
SEQ_SCAN = "Seq Scan on usage_ledger"


@dataclass(frozen=True)
class Result:
    backend: str
    scenario: str
    rows: int
    batches: int
    seconds: float
    rows_per_s: float
    batch_p50_ms: float
    batch_p99_ms: float
    max_backlog: int = 0  # paced run: most rows waiting for a flush


class RowMaker:
    """Realistic ledger rows: random request ids, many tenants, a few models, mostly successes."""

    def __init__(self, tenants: int = 1000, seed: int = 1) -> None:
        self._random = random.Random(seed)
        self._tenants = tenants

    def make(self, count: int) -> list[UsageRecord]:
        rnd, now = self._random, time.time()
        rows = []
        for _ in range(count):
            tenant = rnd.randrange(self._tenants)
            prompt, completion = rnd.randint(20, 2000), rnd.randint(1, 800)
            ok = rnd.random() < 0.98
            rows.append(
                UsageRecord(
                    request_id=f"chatcmpl-{uuid.uuid4().hex}",
                    tenant_id=f"ten_{tenant:016x}",
                    key_id=f"key_{tenant:012x}{rnd.randrange(3):04x}",
                    model=rnd.choice(MODELS),
                    api="chat.completions",
                    started_at=now - 2.5,
                    endpoint="http://10.0.0.7:8100",
                    outcome=Outcome.ok if ok else Outcome.aborted,
                    http_status=200 if ok else 499,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    ended_at=now,
                    ttft_s=0.18,
                    error_code=None,
                    cost_pico=prompt * 50_000 + completion * 150_000,
                    price_version="2026-10-01",
                )
            )
        return rows


def _result(backend: str, scenario: str, latencies: list[float], rows: int, seconds: float) -> Result:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else 0.0
    return Result(
        backend,
        scenario,
        rows,
        len(ms),
        round(seconds, 3),
        round(rows / seconds if seconds else 0.0),
        round(statistics.median(ms), 3) if ms else 0.0,
        round(p99, 3),
    )


Insert = Callable[[list[UsageRecord]], Awaitable[int]]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    rows: int = 0

    async def write(self, insert: Insert, records: list[UsageRecord], batch_size: int) -> None:
        """Write ``records`` in batches of at most ``batch_size``, timing each."""
        for i in range(0, len(records), batch_size):
            started = time.perf_counter()
            self.rows += await insert(records[i : i + batch_size])
            self.latencies.append(time.perf_counter() - started)


async def saturated(
    backend: str, inserts: Mapping[str, Insert], batch_size: int, duration_s: float, rounds: int = 5
) -> list[Result]:
    """Back-to-back batches of fresh rows for ``duration_s`` of insert time per way of inserting.
    The ways take turns in short rounds, so each sees the same table size and background work."""
    maker, tallies = RowMaker(), {name: Tally() for name in inserts}
    for _ in range(rounds):
        for name, insert in inserts.items():
            tally, until = tallies[name], sum(tallies[name].latencies) + duration_s / rounds
            while sum(tally.latencies) < until:
                await tally.write(insert, maker.make(batch_size), batch_size)
    return [_result(backend, name, t.latencies, t.rows, sum(t.latencies)) for name, t in tallies.items()]


async def paced(
    store: Store, backend: str, rate: float, interval_s: float, batch_size: int, duration_s: float
) -> Result:
    """Rows arrive at ``rate``/s; every ``interval_s`` the pending ones are written, as the gateway's
    ``LedgerWriter`` does (its interval and batch size come from the gateway's settings)."""
    maker, tally, produced, max_backlog = RowMaker(seed=2), Tally(), 0, 0
    started = time.perf_counter()
    while (now := time.perf_counter() - started) < duration_s:
        due = int(now * rate)
        max_backlog = max(max_backlog, due - produced)
        await tally.write(store.insert_usage, maker.make(due - produced), batch_size)
        produced = due
        await asyncio.sleep(interval_s)
    await tally.write(store.insert_usage, maker.make(int(duration_s * rate) - produced), batch_size)
    elapsed = time.perf_counter() - started
    name = f"paced {rate:g}/s, flush {interval_s * 1000:g} ms"
    return replace(_result(backend, name, tally.latencies, tally.rows, elapsed), max_backlog=max_backlog)


@asynccontextmanager
async def executemany_insert(url: str) -> AsyncIterator[Insert]:
    """The way the store does not insert: ``executemany`` of one-row INSERTs (psycopg pipelines
    them), in one transaction per batch, rows sorted as the store sorts them."""
    columns = [f.name for f in dataclasses.fields(UsageRecord) if f.name != "extra"]
    sql = (
        f"INSERT INTO usage_ledger ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
        "ON CONFLICT (request_id) DO NOTHING"
    )

    async def insert(records: list[UsageRecord]) -> int:
        params = [tuple(getattr(r, c) for c in columns) for r in sorted(records, key=lambda r: r.request_id)]
        async with conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(sql, params)
            return cursor.rowcount

    async with await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True) as conn:
        yield insert


@asynccontextmanager
async def open_store(backend: str) -> AsyncIterator[tuple[Store, str | None]]:
    """A fresh store and its URL: a new SQLite file, or a new PostgreSQL schema (dropped afterwards)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
            store: Store = SqliteStore(Path(tmp) / "ledger.db")
            await store.open()
            try:
                yield store, None
            finally:
                await store.close()
        return
    async with temporary_schema("bench") as url:
        store = PostgresStore(url)
        await store.open()
        try:
            yield store, url
        finally:
            await store.close()


async def measure_writes(backends: list[str], rate: float, duration_s: float) -> list[Result]:
    settings = Settings()
    interval_s, batch_size = settings.ledger_flush_interval_s, settings.ledger_batch_size
    results = []
    for backend in backends:
        async with open_store(backend) as (store, url), contextlib.AsyncExitStack() as stack:
            await store.insert_usage(RowMaker(seed=3).make(2000))  # warm up (connections, caches)
            inserts: dict[str, Insert] = {f"full batches of {batch_size}": store.insert_usage}
            if url is not None:  # PostgreSQL: the store's unnest INSERT against executemany
                inserts[f"full batches of {batch_size}, executemany"] = await stack.enter_async_context(
                    executemany_insert(url)
                )
            results += await saturated(backend, inserts, batch_size, duration_s)
            results.append(await paced(store, backend, rate, interval_s, batch_size, duration_s))
            results += await saturated(backend, {"single rows": store.insert_usage}, 1, duration_s)
    return results


# One month of rows, evenly spread in time, tenants interleaved; generated inside the server.
LOAD_SQL = """
INSERT INTO usage_ledger (request_id, tenant_id, key_id, model, api, endpoint, outcome, http_status,
    prompt_tokens, completion_tokens, started_at, ended_at, ttft_s, error_code, cost_pico, price_version)
SELECT 'req_' || lpad(i::text, 12, '0'), 'ten_' || mod(i, %(tenants)s),
    'key_' || mod(i, %(tenants)s) || '_' || mod(i, 3), (%(models)s::text[])[1 + mod(i / 7, 4)],
    'chat.completions', 'http://10.0.0.7:8100', 'ok', 200, 20 + mod(i, 2000), 1 + mod(i, 800),
    %(start)s + (i - 1) * %(step)s, %(start)s + (i - 1) * %(step)s + 2.5, 0.18, NULL,
    (20 + mod(i, 2000)) * 50000 + (1 + mod(i, 800)) * 150000, '2026-10-01'
FROM generate_series(1, %(rows)s) AS i
"""


async def load_month(conn: psycopg.AsyncConnection[Any], rows: int, tenants: int) -> None:
    """Fill ``usage_ledger`` (already created by the store) with ``rows`` rows over October 2026."""
    step = (MONTH_END - MONTH_START) / rows
    await conn.execute(
        LOAD_SQL,
        {"tenants": tenants, "models": list(MODELS), "start": MONTH_START, "step": step, "rows": rows},
    )
    await conn.commit()
    await conn.execute("ANALYZE usage_ledger")
    await conn.commit()


async def explain_report(conn: psycopg.AsyncConnection[Any], tenant_id: str) -> list[str]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of exactly what ``usage_report`` runs for one tenant and month."""
    sql, args = report_query(tenant_id, MONTH_START, MONTH_END, "day")
    cursor = await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", args)
    return [str(r[0]) for r in await cursor.fetchall()]


async def measure_report(rows: int, tenants: int) -> dict[str, Any]:
    """Load a month into a scratch schema, then plan and time the report for one tenant."""
    async with temporary_schema("bench") as url:
        store = PostgresStore(url)
        await store.open()
        try:
            async with await psycopg.AsyncConnection.connect(conninfo(url)) as conn:
                started = time.perf_counter()
                await load_month(conn, rows, tenants)
                load_s = time.perf_counter() - started
                plan = await explain_report(conn, "ten_42")
            report_ms = {}
            for group_by in ("day", "model", "key"):
                started = time.perf_counter()
                await store.usage_report("ten_42", MONTH_START, MONTH_END, group_by)
                report_ms[group_by] = round((time.perf_counter() - started) * 1000, 2)
        finally:
            await store.close()
    uses_index = not any(SEQ_SCAN in line for line in plan) and any("Index" in line for line in plan)
    return {
        "rows": rows,
        "tenants": tenants,
        "load_s": round(load_s, 1),
        "rows_per_tenant": rows // tenants,
        "uses_index": uses_index,
        "report_ms": report_ms,
        "plan": plan,
    }


def markdown(results: list[Result]) -> str:
    """Markdown, so a run can be pasted into RESULTS.md as printed."""
    lines = [
        "| backend | scenario | rows | batches | rows/s | batch p50 ms | batch p99 ms | max backlog |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        lines.append(
            f"| {r.backend} | {r.scenario} | {r.rows:,} | {r.batches:,} | {r.rows_per_s:,.0f} | "
            f"{r.batch_p50_ms:.2f} | {r.batch_p99_ms:.2f} | {r.max_backlog or '-'} |"
        )
    return "\n".join(lines)


async def server_version() -> str:
    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url())) as conn:
        row = await (await conn.execute("SHOW server_version")).fetchone()
        return str(row[0]) if row else "?"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results = await measure_writes(args.backends, args.rate, args.duration)
    print(markdown(results), flush=True)
    report = None if args.plan_rows == 0 else await measure_report(args.plan_rows, args.tenants)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python -m benchmarks.ledger", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": {"postgresql": await server_version(), "sqlite": sqlite3.sqlite_version},
        "duration_s": args.duration,
        "writes": [asdict(r) for r in results],
        "report": report,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ledger", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per write scenario")
    parser.add_argument("--rate", type=float, default=2000, help="rows/s offered in the paced scenario")
    parser.add_argument("--backends", type=lambda v: v.split(","), default=["sqlite", "postgres"])
    parser.add_argument("--plan-rows", type=int, default=10_000_000, help="rows in the month (0: skip)")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(run(args))
    report = summary["report"]
    if report is not None:
        print(
            f"\nReport for one tenant over one month, {report['rows']:,} rows in the ledger, "
            f"{report['tenants']:,} tenants (load {report['load_s']} s); "
            f"usage_report ms: {report['report_ms']}"
        )
        print("\n".join(report["plan"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(f"\nJSON: {args.out}")
    if report is not None and not report["uses_index"]:
        print(f"FAIL: the report query does not use an index ({SEQ_SCAN!r} in the plan)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
