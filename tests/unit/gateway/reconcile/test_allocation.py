"""Residual allocation: integer shares that add up exactly, carry-forward, restarts left alone."""

from __future__ import annotations

import random

import pytest

from gateway.reconcile.allocation import allocate, equal_shares, plan_settlement, prompt_shares
from gateway.records import Outcome, UsageRecord
from gateway.store.counters import ClosedPeriod
from gateway.store.settlement import LedgerTokens, PeriodToSettle

ENGINE = "http://e:1"


def cut(
    request_id: str, ended_at: float, prompt: int = 0, completion: int = 0, choices: int = 1
) -> UsageRecord:
    return UsageRecord(
        request_id,
        "ten_1",
        "key_1",
        "m",
        "chat.completions",
        started_at=ended_at - 1,
        endpoint=ENGINE,
        outcome=Outcome.aborted,
        http_status=499,
        prompt_tokens=prompt,
        completion_tokens=completion,
        ended_at=ended_at,
        choices=choices,
        service_tier="flex",
    )


def todo(
    engine: tuple[int, int], ledger: tuple[int, int], rows: list[UsageRecord], carry: tuple[int, int] = (0, 0)
) -> PeriodToSettle:
    period = ClosedPeriod(ENGINE, 0.0, 100.0, engine[0], engine[1], 0, 0)
    return PeriodToSettle(period, LedgerTokens(ledger[0], 0, ledger[1]), rows, *carry)


def test_equal_shares_sum_exactly_with_the_remainder_last() -> None:
    assert equal_shares(10, 3) == [3, 3, 4]
    assert equal_shares(2, 3) == [0, 1, 1]
    rng = random.Random(3)
    for _ in range(500):
        total, count = rng.randrange(0, 10_000), rng.randrange(1, 50)
        shares = equal_shares(total, count)
        assert sum(shares) == total and max(shares) - min(shares) <= 1 and shares == sorted(shares)


def test_prompt_shares_are_billed_tokens_times_choices_summing_to_the_residual() -> None:
    assert prompt_shares(10, [1, 1]) == [5, 5]
    assert prompt_shares(12, [2, 1]) == [3, 6]  # 6 engine tokens each; the n=2 row bills 3
    assert prompt_shares(11, [2, 2, 1]) == [1, 2, 5]  # 3,4,4 → 1,2,4 (10 tokens), then +1 to the last
    rng = random.Random(5)
    for _ in range(500):
        choices = [rng.choice([1, 1, 2, 3, 4]) for _ in range(rng.randrange(1, 8))]
        total = rng.randrange(0, 5000)
        billed = prompt_shares(total, choices)
        left = total - sum(b * n for b, n in zip(billed, choices, strict=True))
        assert 0 <= left < min(choices) and all(b >= 0 for b in billed)
        if 1 in choices:
            assert left == 0


def test_prompt_goes_to_rows_that_got_no_usage_and_completion_to_every_cut_row() -> None:
    rows = [cut("req_a", 10, prompt=8, completion=3), cut("req_b", 20), cut("req_c", 30)]
    allocation = allocate(todo((8 + 9, 3 + 7), (8, 3), rows))
    assert allocation.prompt_tokens == {"req_b": 4, "req_c": 5}  # the remainder to the latest
    assert allocation.completion_tokens == {"req_a": 2, "req_b": 2, "req_c": 3}
    assert (allocation.carry_prompt_tokens, allocation.carry_generation_tokens) == (0, 0)


def test_prompt_goes_to_every_cut_row_when_each_got_some_usage() -> None:
    rows = [cut("req_a", 10, prompt=8), cut("req_b", 20, prompt=8, choices=2)]
    allocation = allocate(todo((8 + 16 + 6, 0), (8 + 16, 0), rows))
    assert allocation.prompt_tokens == {"req_a": 4, "req_b": 1}  # 3 + 1×2, and the odd one to req_a
    assert allocation.completion_tokens == {}


def test_a_negative_residual_is_carried_and_netted_against_the_next_positive_one() -> None:
    rows = [cut("req_a", 10)]
    first = allocate(todo((100, 50), (104, 53), rows))
    assert (first.prompt_tokens, first.completion_tokens) == ({}, {})
    assert (first.carry_prompt_tokens, first.carry_generation_tokens) == (-4, -3)
    second = allocate(todo((110, 60), (100, 50), rows, carry=(-4, -3)))
    assert (second.prompt_tokens, second.completion_tokens) == ({"req_a": 6}, {"req_a": 7})
    assert (second.carry_prompt_tokens, second.carry_generation_tokens) == (0, 0)


def test_a_period_with_a_restart_is_allocated_but_carries_nothing_on() -> None:
    """The engine's count after a restart is at most the truth (the old process's last counts died
    with it): a positive residual is still what the engine made and nobody billed; a negative one
    may be those lost counts, so it is not netted against later periods."""
    period = ClosedPeriod(ENGINE, 0.0, 100.0, 500, 500, 0, resets=1)
    allocation = allocate(PeriodToSettle(period, LedgerTokens(), [cut("req_a", 10)], -7, -2))
    assert (allocation.prompt_tokens, allocation.completion_tokens) == ({"req_a": 493}, {"req_a": 498})
    assert (allocation.carry_prompt_tokens, allocation.carry_generation_tokens) == (0, 0)
    short = ClosedPeriod(ENGINE, 0.0, 100.0, 5, 5, 0, resets=1)
    allocation = allocate(PeriodToSettle(short, LedgerTokens(50, 0, 50), [cut("req_a", 10)]))
    assert allocation == type(allocation)()  # nothing allocated, and -45 not carried


def test_with_no_cut_row_the_residual_stays_unexplained() -> None:
    allocation = allocate(todo((120, 60), (100, 50), []))
    assert (allocation.prompt_tokens, allocation.completion_tokens) == ({}, {})
    assert (allocation.carry_prompt_tokens, allocation.carry_generation_tokens) == (0, 0)


@pytest.mark.parametrize("seed", range(20))
def test_ledger_plus_adjustments_equals_the_engine_over_many_periods(seed: int) -> None:
    """Random periods whose residuals are ≥ 0 on the whole: after settling them all, the ledger
    and the adjustments add up to the engine exactly (each period has an n = 1 cut row)."""
    rng = random.Random(seed)
    carry, engine_total, ledger_total, adjusted_total = (0, 0), [0, 0], [0, 0], [0, 0]
    for i in range(30):
        rows = [cut(f"req_{i}_{j}", 10 + j, choices=rng.choice([1, 2])) for j in range(rng.randrange(0, 4))]
        rows.append(cut(f"req_{i}_last", 99))
        ledger = (rng.randrange(0, 1000), rng.randrange(0, 1000))
        engine = (ledger[0] + rng.randrange(-5, 20), ledger[1] + rng.randrange(-5, 20))
        settlement = plan_settlement(todo(engine, ledger, rows, carry), price=lambda row: None)
        carry = (settlement.carry_prompt_tokens, settlement.carry_generation_tokens)
        for k in range(2):
            engine_total[k] += engine[k]
            ledger_total[k] += ledger[k]
        adjusted_total[0] += settlement.adjusted_prompt_tokens
        adjusted_total[1] += settlement.adjusted_generation_tokens
    for k in range(2):
        assert ledger_total[k] + adjusted_total[k] + carry[k] == engine_total[k]


def test_an_adjustment_row_copies_the_original_and_is_priced() -> None:
    original = cut("req_a", 10, choices=2)
    settlement = plan_settlement(todo((4, 3), (0, 0), [original]), price=lambda r: setattr(r, "cost_pico", 9))
    [row] = settlement.adjustments
    assert (row.request_id, row.adjusts, row.outcome) == ("adj_req_a", "req_a", Outcome.adjustment)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.choices) == (2, 3, 0, 2)
    assert (row.started_at, row.ended_at, row.endpoint, row.service_tier) == (9, 10, ENGINE, "flex")
    assert (row.tenant_id, row.key_id, row.model, row.cost_pico) == ("ten_1", "key_1", "m", 9)
