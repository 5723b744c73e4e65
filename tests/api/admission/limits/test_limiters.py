"""The same behaviour from both limiters: in process, and on the real Redis (one fake clock for both)."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.admission.limits import (
    BudgetRemaining,
    Limiter,
    LimitExceeded,
    Quota,
    Reservation,
    Subject,
)
from gateway.limit_spec import LimitSpec
from tests.api.admission.limits.conftest import LEASE_TTL_S
from tests.support.clock import FakeClock

ACME = Subject("ten_acme", "key_a")
ACME_B = Subject("ten_acme", "key_b")


async def refused(
    limiter: Limiter,
    subject: Subject,
    limits: LimitSpec,
    key: LimitSpec | None = None,
    *,
    tokens: int = 0,
    cost_pico: int = 0,
) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await limiter.admit(subject, limits, key, tokens=tokens, cost_pico=cost_pico)
    return caught.value


async def test_rpm_admits_exactly_the_limit_then_refuses(limiter: Limiter) -> None:
    limits = LimitSpec(rpm=5)
    remaining = [(await limiter.admit(ACME, limits, tokens=0)).state.requests for _ in range(5)]

    assert remaining == [Quota(5, left, (5 - left) * 12.0) for left in (4, 3, 2, 1, 0)]
    error = await refused(limiter, ACME, limits)
    assert (error.reason, error.scope, error.retry_after_s) == ("requests", "tenant", 12.0)
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
        "retry-after": "12",
        "retry-after-ms": "12000",
    }


async def test_rpm_refills_continuously(limiter: Limiter, clock: FakeClock) -> None:
    limits = LimitSpec(rpm=60)  # one request per second
    for _ in range(60):
        await limiter.admit(ACME, limits, tokens=0)
    clock.advance(0.5)
    assert (await refused(limiter, ACME, limits)).retry_after_s == pytest.approx(0.5)

    clock.advance(0.5)
    state = (await limiter.admit(ACME, limits, tokens=0)).state
    assert state.requests == Quota(60, 0, pytest.approx(60.0))
    await refused(limiter, ACME, limits)

    clock.advance(120)  # refills to the burst, never beyond it
    for _ in range(60):
        await limiter.admit(ACME, limits, tokens=0)
    await refused(limiter, ACME, limits)


async def test_tpm_reserves_then_refunds_what_was_not_used(limiter: Limiter) -> None:
    limits = LimitSpec(tpm=1000)
    first = await limiter.admit(ACME, limits, tokens=600)
    assert first.state.tokens == Quota(1000, 400, pytest.approx(36.0))

    error = await refused(limiter, ACME, limits, tokens=600)
    assert (error.reason, error.retry_after_s) == ("tokens", pytest.approx(12.0))
    assert error.requested == 600

    await limiter.settle(first, 100, 0)  # 500 reserved but unused come back
    second = await limiter.admit(ACME, limits, tokens=600)
    assert second.state.tokens == Quota(1000, 300, pytest.approx(42.0))


async def test_tpm_overrun_is_paid_back_before_the_next_request(limiter: Limiter, clock: FakeClock) -> None:
    limits = LimitSpec(tpm=1000)
    reservation = await limiter.admit(ACME, limits, tokens=100)
    await limiter.settle(reservation, 1600, 0)  # 1,500 more than reserved: the bucket goes to -600

    error = await refused(limiter, ACME, limits, tokens=10)
    assert error.retry_after_s == pytest.approx(36.6)
    assert error.state.tokens == Quota(1000, 0, pytest.approx(96.0))
    clock.advance(36.7)
    await limiter.admit(ACME, limits, tokens=10)


async def test_a_request_larger_than_the_tpm_limit_is_told_not_to_retry(limiter: Limiter) -> None:
    error = await refused(limiter, ACME, LimitSpec(tpm=1000), tokens=1001)

    assert (error.reason, error.retry_after_s) == ("tokens", None)
    assert "retry-after" not in error.headers
    assert "larger than the limit" in error.message


async def test_concurrency_slots_come_back_on_settle(limiter: Limiter) -> None:
    limits = LimitSpec(max_concurrent=2)
    first = await limiter.admit(ACME, limits, tokens=10)
    await limiter.admit(ACME, limits, tokens=10)
    error = await refused(limiter, ACME, limits)
    assert (error.reason, error.retry_after_s, error.limit) == ("concurrency", 1.0, 2)

    await limiter.settle(first, 3, 0)  # an aborted request settles what it used so far
    await limiter.admit(ACME, limits, tokens=10)
    await refused(limiter, ACME, limits)


async def test_leases_of_requests_that_never_settle_expire(limiter: Limiter, clock: FakeClock) -> None:
    limits = LimitSpec(max_concurrent=2, monthly_tokens=1000)
    lost = [await limiter.admit(ACME, limits, tokens=400) for _ in range(2)]  # a crashed replica's
    await refused(limiter, ACME, limits, tokens=100)

    clock.advance(LEASE_TTL_S + 1)
    kept = await limiter.admit(ACME, limits, tokens=900)  # slots and reserved tokens are back
    await limiter.settle(lost[0], 50, 0)  # a late settle counts its usage but frees nothing twice
    await refused(limiter, ACME, limits, tokens=51)  # 900 reserved + 50 used: 50 left
    await limiter.settle(kept, 900, 0)
    assert (await limiter.remaining_budget("ten_acme", limits)).tokens == 50


async def test_monthly_tokens_count_reservations_and_usage(limiter: Limiter, clock: FakeClock) -> None:
    limits = LimitSpec(monthly_tokens=1000)
    first = await limiter.admit(ACME, limits, tokens=600)
    error = await refused(limiter, ACME, limits, tokens=500)
    until_december = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp() - clock.now
    assert (error.reason, error.retry_after_s) == ("monthly_tokens", pytest.approx(until_december))
    assert error.headers["retry-after"] == str(int(until_december))

    await limiter.settle(first, 300, 0)
    second = await limiter.admit(ACME, limits, tokens=500)
    assert (await limiter.remaining_budget("ten_acme", limits)).tokens == 200
    await limiter.settle(second, 700, 0)  # more than reserved: counted in full
    assert (await limiter.remaining_budget("ten_acme", limits)).tokens == 0
    await refused(limiter, ACME, limits, tokens=0)


async def test_monthly_budget_resets_when_the_month_rolls_over(limiter: Limiter, clock: FakeClock) -> None:
    clock.now = dt.datetime(2026, 11, 30, 23, 59, 58, tzinfo=dt.UTC).timestamp()
    limits = LimitSpec(monthly_tokens=100)
    await limiter.settle(await limiter.admit(ACME, limits, tokens=100), 100, 0)
    error = await refused(limiter, ACME, limits, tokens=1)
    assert (error.reason, error.retry_after_s) == ("monthly_tokens", pytest.approx(2.0))

    clock.advance(3)
    reservation = await limiter.admit(ACME, limits, tokens=100)
    assert reservation.month == "2026-12"


async def test_monthly_cost_is_exact_beyond_float_precision(limiter: Limiter) -> None:
    budget = 2**62 + 1  # picodollars: beyond 2^53, where a double would round
    limits = LimitSpec(monthly_cost_pico=budget)
    await limiter.seed_month("ten_acme", "2026-11", 0, 2**62 - 7)
    reservation = await limiter.admit(ACME, limits, tokens=10, cost_pico=5)
    assert (await limiter.remaining_budget("ten_acme", limits)).cost_pico == 3

    await limiter.settle(reservation, 10, 4)
    assert (await limiter.remaining_budget("ten_acme", limits)).cost_pico == 4
    error = await refused(limiter, ACME, limits, cost_pico=5)
    assert (error.reason, error.limit, error.requested) == ("monthly_cost", budget, 5)


async def test_seeding_raises_counters_and_never_counts_twice(limiter: Limiter) -> None:
    limits = LimitSpec(monthly_tokens=1000, monthly_cost_pico=10**9)
    await limiter.seed_month("ten_acme", "2026-11", 500, 10**6)
    await limiter.seed_month("ten_acme", "2026-11", 500, 10**6)  # a second replica starting
    await limiter.seed_month("ten_acme", "2026-11", 300, 10**5)  # a stale ledger read
    await limiter.seed_month("ten_acme", "2026-10", 900, 10**8)  # another month
    assert await limiter.remaining_budget("ten_acme", limits) == BudgetRemaining(500, 10**9 - 10**6)

    await limiter.settle(await limiter.admit(ACME, limits, tokens=100), 100, 0)  # 600 counted
    await limiter.seed_month("ten_acme", "2026-11", 550, 0)
    assert (await limiter.remaining_budget("ten_acme", limits)).tokens == 400
    await limiter.seed_month("ten_acme", "2026-11", 700, 0)
    assert (await limiter.remaining_budget("ten_acme", limits)).tokens == 300


async def test_key_limits_and_the_tenant_total_both_hold(limiter: Limiter) -> None:
    tenant, key_a = LimitSpec(rpm=5), LimitSpec(rpm=2)
    first = await limiter.admit(ACME, tenant, key_a, tokens=0)
    assert first.state.requests == Quota(2, 1, pytest.approx(30.0))  # the key binds first
    await limiter.admit(ACME, tenant, key_a, tokens=0)
    assert (await refused(limiter, ACME, tenant, key_a)).scope == "key"

    for _ in range(3):
        await limiter.admit(ACME_B, tenant, None, tokens=0)
    error = await refused(limiter, ACME_B, tenant)
    assert (error.scope, error.reason, error.limit) == ("tenant", "requests", 5)


async def test_a_refused_request_takes_nothing(limiter: Limiter) -> None:
    tenant, key = LimitSpec(rpm=10, max_concurrent=5, monthly_tokens=10_000), LimitSpec(tpm=100)
    error = await refused(limiter, ACME, tenant, key, tokens=200)
    assert (error.scope, error.reason) == ("key", "tokens")

    reservation = await limiter.admit(ACME, tenant, key, tokens=100)
    assert reservation.state.requests == Quota(10, 9, pytest.approx(6.0))
    assert (await limiter.remaining_budget("ten_acme", tenant)).tokens == 9_900


async def test_the_longest_wait_is_reported_when_several_limits_refuse(limiter: Limiter) -> None:
    limits = LimitSpec(rpm=1, tpm=1000)
    await limiter.admit(ACME, limits, tokens=100)
    error = await refused(limiter, ACME, limits, tokens=950)  # tokens: 3 s more, requests: 60 s
    assert (error.reason, error.retry_after_s) == ("requests", pytest.approx(60.0))
    assert error.state.requests == Quota(1, 0, pytest.approx(60.0))

    other, limits = Subject("ten_other", "key_o"), LimitSpec(rpm=1, tpm=100)
    await limiter.settle(await limiter.admit(other, limits, tokens=100), 200, 0)  # tokens bucket at -100
    error = await refused(limiter, other, limits, tokens=100)  # tokens: 120 s, requests: 60 s
    assert (error.reason, error.retry_after_s) == ("tokens", pytest.approx(120.0))


async def test_unlimited_subjects_get_no_headers_and_hold_nothing(limiter: Limiter) -> None:
    reservation = await limiter.admit(ACME, LimitSpec(), LimitSpec(), tokens=10**9)

    assert (reservation.holds, reservation.state.headers()) == ((), {})
    await limiter.settle(reservation, 10**9, 10**9)
    assert reservation.settled


async def test_settling_twice_gives_back_once(limiter: Limiter) -> None:
    limits = LimitSpec(max_concurrent=1, tpm=100)
    reservation: Reservation = await limiter.admit(ACME, limits, tokens=100)
    await limiter.settle(reservation, 0, 0)
    await limiter.settle(reservation, 0, 0)

    again = await limiter.admit(ACME, limits, tokens=100)
    assert again.state.tokens == Quota(100, 0, pytest.approx(60.0))
    await refused(limiter, ACME, limits, tokens=0)


async def test_more_lapsed_leases_than_one_sweep_clears(limiter: Limiter, clock: FakeClock) -> None:
    limits = LimitSpec(max_concurrent=150)
    for _ in range(150):
        await limiter.admit(ACME, limits, tokens=1)  # never settled
    clock.advance(LEASE_TTL_S + 1)

    for _ in range(150):  # the Redis script sweeps 100 per call, but counts only live leases
        await limiter.admit(ACME, limits, tokens=1)
    assert (await refused(limiter, ACME, limits)).reason == "concurrency"


async def test_a_key_can_be_limited_under_an_unlimited_tenant(limiter: Limiter) -> None:
    reservation = await limiter.admit(ACME, LimitSpec(), LimitSpec(tpm=100), tokens=60)

    assert [hold.scope for hold in reservation.holds] == ["key"]
    assert reservation.state.tokens == Quota(100, 40, pytest.approx(36.0))
    error = await refused(limiter, ACME, LimitSpec(), LimitSpec(tpm=100), tokens=60)
    assert (error.scope, error.reason) == ("key", "tokens")
    await limiter.admit(ACME_B, LimitSpec(), LimitSpec(tpm=100), tokens=60)  # another key: its own bucket
