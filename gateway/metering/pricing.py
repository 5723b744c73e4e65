"""Prices per model with effective dates, and exact request costs.

Money never touches a float: prices are ``Decimal`` per million tokens with at most six decimal
places (``gateway.config.prices`` reads and checks the file), so the cost of one token is a whole
number of picodollars (10^-12) and a request's cost is an exact integer. Integers sum exactly in
SQLite and PostgreSQL alike; ``to_decimal`` converts back at the edge (reports, the admin API).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from decimal import Decimal

from gateway.config.prices import PriceTable
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

    @property
    def version(self) -> str:
        return f"{self.model}@{day_of(self.effective_at)}"

    def cost_pico(self, prompt_tokens: int, completion_tokens: int) -> int:
        prompt = int(self.prompt_per_million * _PER_MILLION_TO_PICO_PER_TOKEN)
        completion = int(self.completion_per_million * _PER_MILLION_TO_PICO_PER_TOKEN)
        return prompt_tokens * prompt + completion_tokens * completion


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
