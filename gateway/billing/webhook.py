"""POSTing usage event batches to a billing webhook, signed with HMAC-SHA256.

One batch is one request: ``Content-Type: application/cloudevents-batch+json``, the body a JSON
array of CloudEvents, and these headers:

- ``webhook-id``: the batch's id, derived from its event ids (a retry of the same batch has the same one)
- ``webhook-timestamp``: Unix seconds when this attempt was signed
- ``webhook-signature``: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`` keyed with the
  shared secret (Stripe's scheme). A receiver recomputes it over the raw body, compares in
  constant time (``verify_signature``), and refuses a timestamp too far from its own clock.

Any 2xx acknowledges the whole batch; anything else, or no answer, is a failure to retry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Protocol

import aiohttp

from gateway.billing.events import UsageEvent
from gateway.clock import Clock, wall

CONTENT_TYPE = "application/cloudevents-batch+json"
SIGNATURE_TOLERANCE_S = 300


class WebhookDeliveryError(Exception):
    """The receiver did not acknowledge a batch; ``reason`` is a bounded metric label
    (``status``, ``connection``, ``timeout``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body``."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_signature(
    secret: bytes, header: str, body: bytes, now: float, tolerance_s: float = SIGNATURE_TOLERANCE_S
) -> bool:
    """What a receiver runs: a ``v1`` signature matches and the timestamp is recent."""
    fields = [part.partition("=") for part in header.split(",")]
    timestamps = [value for name, _, value in fields if name == "t"]
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        return False
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(name == "v1" and hmac.compare_digest(value, expected) for name, _, value in fields)


def batch_body(events: Sequence[UsageEvent]) -> bytes:
    return json.dumps([e.model_dump(mode="json") for e in events], separators=(",", ":")).encode()


def batch_id(events: Sequence[UsageEvent]) -> str:
    digest = hashlib.sha256("\n".join(e.id for e in events).encode()).hexdigest()
    return f"batch_{digest[:32]}"


class BatchSender(Protocol):
    """Delivers one batch of events; raises ``WebhookDeliveryError`` unless it was acknowledged."""

    async def send(self, events: Sequence[UsageEvent]) -> None: ...


class WebhookSender:
    """Delivers one batch per call to one URL; raises ``WebhookDeliveryError`` unless a 2xx came."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        secret: bytes,
        timeout_s: float,
        clock: Clock = wall,
        authorization: str | None = None,
    ) -> None:
        self._session = session
        self._authorization = authorization
        self._url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock

    def headers(self, events: Sequence[UsageEvent], body: bytes) -> dict[str, str]:
        timestamp = int(self._clock())
        headers = {
            "Content-Type": CONTENT_TYPE,
            "webhook-id": batch_id(events),
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(self._secret, timestamp, body),
        }
        if self._authorization:
            headers["Authorization"] = self._authorization
        return headers

    async def send(self, events: Sequence[UsageEvent]) -> None:
        body = batch_body(events)
        try:
            async with self._session.post(
                self._url, data=body, headers=self.headers(events, body), timeout=self._timeout
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError as exc:
            raise WebhookDeliveryError("timeout", f"no answer within {self._timeout.total} s") from exc
        except aiohttp.ClientError as exc:
            raise WebhookDeliveryError("connection", f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            raise WebhookDeliveryError("status", f"HTTP {status}")
