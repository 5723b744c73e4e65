"""How the gateway's metrics combine across worker processes."""

from __future__ import annotations

from prometheus_client import Gauge

from gateway.metrics import GatewayMetrics


def test_every_gauge_says_how_live_workers_values_combine() -> None:
    metrics = GatewayMetrics()
    modes = {g._name: g._multiprocess_mode for g in vars(metrics).values() if isinstance(g, Gauge)}
    assert modes == {
        "gateway_inflight_requests": "livesum",
        "gateway_engine_up": "livemin",  # down as soon as one worker finds it down
        "gateway_budget_remaining": "livemostrecent",
        "gateway_ledger_backlog_rows": "livesum",
        "gateway_ledger_backlog_age_seconds": "livemax",
        "gateway_queue_depth": "livesum",
        "gateway_usage_events_lag_seconds": "livemax",
        "gateway_metering_drift_tokens": "livemostrecent",
    }


def test_a_removed_engine_loses_its_series_in_one_process() -> None:
    metrics = GatewayMetrics()
    metrics.engine_up.labels("m", "http://e:1").set(1)
    metrics.forget_engine("m", "http://e:1")
    assert b"http://e:1" not in metrics.render()
