"""Exact costs: uncached prompt, cached prompt and completion tokens, each at its own price."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.metering.pricing import Price
from gateway.money import PICO, to_decimal


def price(prompt: str, completion: str = "0", **cached: Decimal) -> Price:
    return Price("m", 0.0, Decimal(prompt), Decimal(completion), **cached)  # type: ignore[arg-type]


def test_cached_prompt_tokens_cost_a_tenth_of_the_input_price_by_default() -> None:
    rate = price("0.15", "0.6")
    assert rate.cached_prompt_pico == 15_000  # $0.015 per million: 0.1 × $0.15
    # 300 prompt tokens of which 256 cached, 10 completion tokens.
    assert rate.cost_pico(300, 10, cached_tokens=256) == 44 * 150_000 + 256 * 15_000 + 10 * 600_000
    assert rate.cost_pico(300, 10) == 300 * 150_000 + 10 * 600_000  # nothing cached: as before


def test_the_cost_equals_the_decimal_arithmetic_to_the_picodollar() -> None:
    rate = price("0.123456", "1.000001", cached_prompt_per_million=Decimal("0.012345"))
    prompt, cached, completion = 1_234_567, 1_000_000, 89
    exact = (
        (prompt - cached) * Decimal("0.123456")
        + cached * Decimal("0.012345")
        + completion * Decimal("1.000001")
    ) / 10**6
    assert to_decimal(rate.cost_pico(prompt, completion, cached)) == exact
    assert rate.cost_pico(prompt, completion, cached) == exact * PICO


@pytest.mark.parametrize(
    ("prompt", "factor", "pico"),
    [
        ("0.000015", "0.1", 2),  # 1.5 pico: half to even, 2
        ("0.000025", "0.1", 2),  # 2.5 pico: 2
        ("0.000035", "0.1", 4),  # 3.5 pico: 4
        ("0.000017", "0.1", 2),  # 1.7 pico: 2
        ("3", "0.333333", 999_999),
        ("0.5", "0", 0),
        ("0.5", "1", 500_000),
    ],
)
def test_a_factor_rounds_the_per_token_price_half_even(prompt: str, factor: str, pico: int) -> None:
    rate = price(prompt, cached_prompt_factor=Decimal(factor))
    assert rate.cached_prompt_pico == pico
    assert rate.cost_pico(10, 0, cached_tokens=4) == 6 * int(Decimal(prompt) * 10**6) + 4 * pico


def test_an_explicit_cached_price_wins_over_the_factor() -> None:
    rate = price("1", cached_prompt_per_million=Decimal("0.3"), cached_prompt_factor=Decimal("0.9"))
    assert rate.cached_prompt_pico == 300_000


def test_cached_tokens_are_clamped_to_the_prompt() -> None:
    rate = price("1", "2")
    assert rate.cost_pico(5, 1, cached_tokens=9) == 5 * 100_000 + 2_000_000
    assert rate.cost_pico(5, 1, cached_tokens=-3) == rate.cost_pico(5, 1)
