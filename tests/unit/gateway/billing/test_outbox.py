"""The webhook outbox's rounds, with an in-memory log and a scripted receiver: the cursor moves only
after an acknowledgement, failures back off exponentially up to the cap, and one holder at a time."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.billing.events import UsageEvent, UsageEventFeed
from gateway.billing.outbox import RetryBackoff, WebhookOutbox
from gateway.billing.webhook import WebhookDeliveryError
from gateway.metrics import GatewayMetrics
from tests.support.metrics import sample
from tests.unit.gateway.billing.fakes import MemoryEventLog
from tests.unit.gateway.billing.test_events import T0, record


class ScriptedReceiver:
    """Fails with the reasons given, in turn, then acknowledges everything."""

    def __init__(self, *failures: str) -> None:
        self.failures = list(failures)
        self.attempts: list[list[str]] = []
        self.acknowledged: list[str] = []

    async def send(self, events: Sequence[UsageEvent]) -> None:
        self.attempts.append([e.id for e in events])
        if self.failures:
            raise WebhookDeliveryError(self.failures.pop(0), "scripted")
        self.acknowledged += [e.id for e in events]


def outbox(log: MemoryEventLog, receiver: ScriptedReceiver, metrics: GatewayMetrics) -> WebhookOutbox:
    return WebhookOutbox(
        log,
        UsageEventFeed(log, "gw", "USD"),
        receiver,
        metrics,
        batch_size=2,
        interval_s=1.0,
        backoff=RetryBackoff(initial_s=0.5, max_s=3.0),
        clock=lambda: T0 + 100,
    )


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = RetryBackoff(initial_s=1.0, max_s=60.0)
    assert [backoff.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(10_000) == 60


async def test_batches_go_back_to_back_then_wait_the_interval() -> None:
    log = MemoryEventLog([record(f"r{i}", ended_at=T0 + i) for i in range(5)])
    receiver, metrics = ScriptedReceiver(), GatewayMetrics()
    box = outbox(log, receiver, metrics)
    assert [await box.push_once() for _ in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert receiver.attempts == [["r0", "r1"], ["r2", "r3"], ["r4"]]
    assert await log.cursor("webhook") == 5
    text = metrics.render().decode()
    assert sample(text, "gateway_usage_events_sent_total") == 5
    assert sample(text, "gateway_usage_events_lag_seconds") == 0


async def test_a_failed_batch_is_retried_with_backoff_and_the_cursor_waits() -> None:
    log = MemoryEventLog([record(f"r{i}", ended_at=T0 + i) for i in range(3)])
    receiver, metrics = (
        ScriptedReceiver("status", "connection", "timeout", "status", "status"),
        GatewayMetrics(),
    )
    box = outbox(log, receiver, metrics)
    delays = [await box.push_once() for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0] and box.failures == 5
    assert await log.cursor("webhook") == 0 and receiver.acknowledged == []
    text = metrics.render().decode()
    assert sample(text, "gateway_usage_webhook_failures_total", reason="status") == 3
    assert sample(text, "gateway_usage_webhook_failures_total", reason="connection") == 1
    assert sample(text, "gateway_usage_events_lag_seconds") == 100  # r0 ended at T0 + 0
    log.append(record("r3", ended_at=T0 + 3))
    assert [await box.push_once() for _ in range(3)] == [0.0, 1.0, 1.0]
    assert receiver.acknowledged == ["r0", "r1", "r2", "r3"] and box.failures == 0
    assert sample(metrics.render().decode(), "gateway_usage_events_lag_seconds") == 0


async def test_a_round_sits_out_while_another_holds_the_outbox() -> None:
    log = MemoryEventLog([record("r0")])
    receiver = ScriptedReceiver()
    metrics = GatewayMetrics()
    box = outbox(log, receiver, metrics)
    async with log.claim("webhook"):
        assert await box.push_once() == 1.0
    assert receiver.attempts == []
    # It still reports the lag: r0 (ended at T0 + 1.25) is not acknowledged at T0 + 100.
    assert sample(metrics.render().decode(), "gateway_usage_events_lag_seconds") == 98.75
    await box.push_once()
    assert receiver.acknowledged == ["r0"]


async def test_push_round_sleeps_what_the_attempt_asked() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    log = MemoryEventLog([record("r0")])
    box = WebhookOutbox(
        log, UsageEventFeed(log, "gw", "USD"), ScriptedReceiver("status"), GatewayMetrics(), sleep=sleep
    )
    await box.push_round()
    await box.push_round()
    await box.push_round()
    assert slept == [1.0, 1.0, 1.0]
