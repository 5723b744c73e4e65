"""Metrics hygiene and the Grafana dashboard: every metric the README, the runbook or a dashboard
query names is exported by a gateway from the moment it starts, and no ``*_created`` series."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import SIM_MODEL, Gateway
from tests.support.metrics import sample

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway.json"
METRIC = re.compile(r"\bgateway_[a-z_]+[a-z]\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names(text: str) -> set[str]:
    """The series names a scrape of ``text`` can hold, from its ``# TYPE`` lines."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name)
        names.update(name.removesuffix("_total") + suffix for suffix in SUFFIXES.get(kind, ()))
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t for panel in dashboard["panels"] for t in panel.get("targets", ())]
    templating = [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return [t["expr"] for t in targets] + templating


async def test_every_dashboard_query_names_a_metric_the_gateway_exports(gateway: Gateway) -> None:
    exported = exported_names((await gateway.client.get("/metrics")).text)
    queries = dashboard_queries()
    assert len(queries) > 20
    for query in queries:
        names = set(METRIC.findall(query))
        assert names, query
        assert names <= exported, (query, names - exported)


async def test_every_documented_metric_exists_from_the_start(gateway: Gateway) -> None:
    text = (await gateway.client.get("/metrics")).text
    documented = set(METRIC.findall((ROOT / "README.md").read_text()))
    documented |= set(METRIC.findall((ROOT / "docs" / "operations.md").read_text()))
    assert len(documented) > 15
    assert documented <= exported_names(text), documented - exported_names(text)
    # Series without a tenant are there, at 0, before the first request.
    assert sample(text, "gateway_inflight_requests", model=SIM_MODEL) == 0
    assert sample(text, "gateway_queue_depth", model=SIM_MODEL) == 0
    assert sample(text, "gateway_engine_ejections_total", model=SIM_MODEL) == 0
    assert sample(text, "gateway_background_task_restarts_total", task="ledger") == 0
    assert sample(text, "gateway_auth_failures_total") == 0
    assert sample(text, "gateway_ledger_backlog_rows") == 0
    assert "_created" not in text


async def test_time_to_first_token_is_only_for_streams(gateway: Gateway) -> None:
    secret, _ = await gateway.new_key("ttft")
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    await gateway.client.post("/v1/chat/completions", json=body, headers=headers)
    await gateway.client.post("/v1/chat/completions", json={**body, "stream": True}, headers=headers)
    text = (await gateway.client.get("/metrics")).text
    labels = {"tenant": "ttft", "model": SIM_MODEL}
    assert sample(text, "gateway_request_duration_seconds_count", **labels) == 2
    assert sample(text, "gateway_time_to_first_token_seconds_count", **labels) == 1
    assert sample(text, "gateway_time_per_output_token_seconds_count", **labels) == 1
    # Edges from milliseconds to minutes: long generations have buckets of their own.
    assert sample(text, "gateway_request_duration_seconds_bucket", **labels, le="0.05") <= 2
    assert sample(text, "gateway_request_duration_seconds_bucket", **labels, le="1200.0") == 2
