"""Webhook signatures: what the gateway signs is what a receiver verifies, and nothing else."""

from __future__ import annotations

from gateway.billing.events import usage_event
from gateway.billing.webhook import batch_id, signature, signature_header, verify_signature
from gateway.store.events import UsageEntry
from tests.unit.gateway.billing.test_events import record

SECRET = b"whsec-0123456789abcdef"
BODY = b'[{"id":"req_1"}]'
NOW = 1_800_000_000


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    # The reference value is openssl's:
    # printf '1800000000.[{"id":"req_1"}]' | openssl dgst -sha256 -hmac whsec-0123456789abcdef
    header = signature_header(SECRET, NOW, BODY)
    assert header == f"t={NOW},v1={signature(SECRET, NOW, BODY)}"
    assert signature(SECRET, NOW, BODY) == "681f49e8c03a1dcf6909063eb1c7cc3d8a3a743c2aee210863d493f82893fbd6"
    assert verify_signature(SECRET, header, BODY, now=NOW + 10)


def test_a_changed_body_secret_or_old_timestamp_fails() -> None:
    header = signature_header(SECRET, NOW, BODY)
    assert not verify_signature(SECRET, header, BODY + b" ", now=NOW)
    assert not verify_signature(b"another-secret-value", header, BODY, now=NOW)
    assert not verify_signature(SECRET, header, BODY, now=NOW + 301)
    assert not verify_signature(SECRET, f"t={NOW + 1},v1={signature(SECRET, NOW, BODY)}", BODY, now=NOW)
    assert not verify_signature(SECRET, "v1=abc", BODY, now=NOW)
    assert not verify_signature(SECRET, "", BODY, now=NOW)


def test_any_of_several_v1_signatures_may_match_during_a_secret_rotation() -> None:
    header = f"t={NOW},v1={signature(b'old-secret-0123456', NOW, BODY)},v1={signature(SECRET, NOW, BODY)}"
    assert verify_signature(SECRET, header, BODY, now=NOW)


def test_a_batch_id_is_the_same_for_the_same_events() -> None:
    events = [usage_event(UsageEntry(i, record(f"r{i}"), "acme"), "gw", "USD") for i in range(3)]
    assert batch_id(events) == batch_id(list(events)) != batch_id(events[:2])
    assert batch_id(events).startswith("batch_") and len(batch_id(events)) == 38
