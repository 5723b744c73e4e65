"""``/v1/usage`` without a period reports the month to date; a row with no model says so."""

from __future__ import annotations

import datetime as dt
import time

from gateway.records import UsageRecord
from tests.conftest import Gateway


async def test_own_usage_defaults_to_the_month_to_date_and_names_rows_without_a_model(
    gateway: Gateway,
) -> None:
    secret, key = await gateway.new_key("defaults")
    now = time.time()
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    rows = [
        UsageRecord("req-a", key.tenant_id, key.id, "sim-model", "chat.completions", now, prompt_tokens=3),
        UsageRecord("req-b", key.tenant_id, key.id, "", "chat.completions", now),  # body never parsed
        # Last month: outside the default period.
        UsageRecord("req-c", key.tenant_id, key.id, "sim-model", "chat.completions", now - 40 * 86_400),
    ]
    await gateway.state.store.insert_usage(rows)
    answer = await gateway.client.get(
        "/v1/usage", params={"group_by": "model"}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert answer.status_code == 200
    report = answer.json()
    assert (report["from"], report["to"]) == (today.replace(day=1).isoformat(), today.isoformat())
    assert sorted(line["group"] for line in report["data"]) == ["(no model)", "sim-model"]
    assert report["total"]["requests"] == 2
    only_to = await gateway.client.get(
        "/v1/usage", params={"to": "2026-11-15"}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert (only_to.json()["from"], only_to.json()["to"]) == ("2026-11-01", "2026-11-15")
    bad = await gateway.client.get(
        "/v1/usage", params={"from": "soon"}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "from")
    assert bad.json()["error"]["message"] == "'soon' is not a date (YYYY-MM-DD)."
