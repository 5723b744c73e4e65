"""The ledger benchmark's claims, kept true by tests: reports use the index, and the script runs."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg

from benchmarks.ledger import MONTH_END, MONTH_START, SEQ_SCAN, explain_report, load_month, main
from gateway.store.postgres import PostgresStore, conninfo
from tests.support.postgres import require_postgres, temporary_schema


async def test_a_tenants_monthly_report_reads_the_ledger_through_an_index() -> None:
    require_postgres()
    async with temporary_schema() as url:
        store = PostgresStore(url)
        await store.open()
        try:
            async with await psycopg.AsyncConnection.connect(conninfo(url)) as conn:
                await load_month(conn, rows=200_000, tenants=1000)
                plan = await explain_report(conn, "ten_42")
            by_day = await store.usage_report("ten_42", MONTH_START, MONTH_END, "day")
        finally:
            await store.close()
    assert not [line for line in plan if SEQ_SCAN in line], "\n".join(plan)
    assert [line for line in plan if "Index" in line and "usage_ledger_tenant_time" in line], "\n".join(plan)
    assert len(by_day) == 31 and sum(g.requests for g in by_day) == 200


def test_the_benchmark_runs_and_writes_its_json(tmp_path: Path) -> None:
    require_postgres()
    out = tmp_path / "ledger.json"
    assert main(["--duration", "0.1", "--plan-rows", "20000", "--tenants", "100", "--out", str(out)]) == 0
    summary = orjson.loads(out.read_bytes())
    assert {w["backend"] for w in summary["writes"]} == {"sqlite", "postgres"}
    assert all(w["rows"] > 0 for w in summary["writes"])
    assert summary["report"]["rows"] == 20000 and summary["report"]["uses_index"]
