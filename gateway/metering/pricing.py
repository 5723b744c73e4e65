"""Prices per model with effective dates, and exact request costs.

Money never touches a float: prices are ``Decimal`` per million tokens with at most six decimal
places (``gateway.config.prices`` reads and checks the file), so the cost of one token is a whole
number of picodollars (10^-12) and a request's cost is an exact integer. Integers sum exactly in
SQLite and PostgreSQL alike; ``to_decimal`` converts back at the edge (reports, the admin API).

A request's cost is its uncached prompt tokens at the input price, its cached prompt tokens at the
cached-input price and its completion tokens at the output price. An explicit cached price is a
whole number of picodollars a token like any price; one given as a factor of the input price is
rounded half-even to a whole picodollar a token (0.1 × $0.000015/M would be 1.5 pico: 2), so every
cost stays an exact integer and every request of a price version pays the same per-token rate.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from gateway.config.prices import DEFAULT_CACHED_PROMPT_FACTOR, PriceTable
from gateway.money import PICO
from gateway.utc import day_of, midnight

_PER_MILLION_TO_PICO_PER_TOKEN = PICO // 10**6  # a price per 10^6 tokens → picounits per token


@dataclass(frozen=True, slots=True)
class Price:
    """One price version of one model."""

    model: str
    effective_at: float  # epoch seconds, 00:00 UTC of the effective date
    prompt_per_million: Decimal
    completion_per_million: Decimal
    # The cached-input price: explicit, else ``cached_prompt_factor`` × the input price.
    cached_prompt_per_million: Decimal | None = None
    cached_prompt_factor: Decimal = DEFAULT_CACHED_PROMPT_FACTOR

    @property
    def version(self) -> str:
        return f"{self.model}@{day_of(self.effective_at)}"

    @property
    def cached_prompt_pico(self) -> int:
        """Picodollars per cached prompt token (a factor's product rounded half-even)."""
        if self.cached_prompt_per_million is not None:
            return _pico_per_token(self.cached_prompt_per_million)
        cached = _pico_per_token(self.prompt_per_million) * self.cached_prompt_factor
        return int(cached.to_integral_value(rounding=ROUND_HALF_EVEN))

    def cost_pico(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """The exact cost in picodollars; ``cached_tokens`` are those of ``prompt_tokens`` the
        engine served from its prefix cache."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return (
            (prompt_tokens - cached) * _pico_per_token(self.prompt_per_million)
            + cached * self.cached_prompt_pico
            + completion_tokens * _pico_per_token(self.completion_per_million)
        )


def _pico_per_token(per_million: Decimal) -> int:
    """A price per million tokens of at most six decimals, as whole picounits per token."""
    return int(per_million * _PER_MILLION_TO_PICO_PER_TOKEN)


class PriceBook:
    """Every price version, looked up by model and the request's start time.

    Built from a validated ``PriceTable`` (``from_table``), which has at most one version per
    model and day; an empty book prices nothing (every cost is zero, unpriced).
    """

    def __init__(self, prices: list[Price], currency: str = "USD") -> None:
        self.currency = currency
        self._by_model: dict[str, list[Price]] = {}
        for price in sorted(prices, key=lambda p: (p.model, p.effective_at)):
            self._by_model.setdefault(price.model, []).append(price)
        self._starts = {m: [p.effective_at for p in v] for m, v in self._by_model.items()}

    @classmethod
    def from_table(cls, table: PriceTable) -> PriceBook:
        prices = [
            Price(
                model=entry.model,
                effective_at=midnight(entry.effective),
                prompt_per_million=entry.prompt_per_million,
                completion_per_million=entry.completion_per_million,
                cached_prompt_per_million=entry.cached_prompt_per_million,
                cached_prompt_factor=(
                    entry.cached_prompt_factor
                    if entry.cached_prompt_factor is not None
                    else table.cached_prompt_factor
                ),
            )
            for entry in table.prices
        ]
        return cls(prices, table.currency)

    def price_at(self, model: str, at: float) -> Price | None:
        """The version in force at ``at`` (None: the model has no price yet, or none at all)."""
        starts = self._starts.get(model)
        if not starts:
            return None
        index = bisect.bisect_right(starts, at) - 1
        return self._by_model[model][index] if index >= 0 else None
