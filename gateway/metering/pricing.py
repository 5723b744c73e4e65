"""Prices per model with effective dates, and exact request costs.

Money never touches a float: prices are ``Decimal`` per million tokens with at most six decimal
places, so the cost of one token is a whole number of picodollars (10^-12) and a request's cost
is an exact integer. Integers sum exactly in SQLite and PostgreSQL alike; ``to_decimal``
converts back at the edge (reports, the admin API).
"""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from gateway.money import PICO
from gateway.utc import day_of, midnight

_PER_MILLION_TO_PICO_PER_TOKEN = PICO // 10**6  # a price per 10^6 tokens → picounits per token
MAX_DECIMALS = 6


class PriceError(ValueError):
    """The price table is malformed."""


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
    """Every price version, looked up by model and the request's start time."""

    def __init__(self, prices: list[Price], currency: str = "USD") -> None:
        self.currency = currency
        self._by_model: dict[str, list[Price]] = {}
        for price in sorted(prices, key=lambda p: (p.model, p.effective_at)):
            versions = self._by_model.setdefault(price.model, [])
            if versions and versions[-1].effective_at == price.effective_at:
                raise PriceError(f"two prices for {price.model} take effect on the same date")
            versions.append(price)
        self._starts = {m: [p.effective_at for p in v] for m, v in self._by_model.items()}

    def price_at(self, model: str, at: float) -> Price | None:
        """The version in force at ``at`` (None: the model has no price yet, or none at all)."""
        starts = self._starts.get(model)
        if not starts:
            return None
        index = bisect.bisect_right(starts, at) - 1
        return self._by_model[model][index] if index >= 0 else None

    def all_prices(self) -> list[Price]:
        return [p for versions in self._by_model.values() for p in versions]


def _amount(entry: dict[str, Any], field: str, where: str) -> Decimal:
    raw = entry.get(field, "0")
    if isinstance(raw, float):
        raise PriceError(f"{where}: {field} must be quoted (a YAML float would lose digits)")
    try:
        amount = Decimal(str(raw))
    except InvalidOperation as exc:
        raise PriceError(f"{where}: {field} is not a number: {raw!r}") from exc
    exponent = amount.as_tuple().exponent
    if amount < 0 or not isinstance(exponent, int) or -exponent > MAX_DECIMALS:
        raise PriceError(f"{where}: {field} must be ≥ 0 with at most {MAX_DECIMALS} decimals")
    return amount


def _effective(entry: dict[str, Any], where: str) -> float:
    raw = entry.get("effective")
    if isinstance(raw, str):
        try:
            raw = dt.date.fromisoformat(raw)
        except ValueError as exc:
            raise PriceError(f"{where}: effective must be a date (YYYY-MM-DD)") from exc
    if not isinstance(raw, dt.date):
        raise PriceError(f"{where}: effective must be a date (YYYY-MM-DD)")
    return midnight(raw)


def parse_prices(raw: Any, source: str = "prices") -> PriceBook:
    if not isinstance(raw, dict) or not isinstance(raw.get("prices"), list):
        raise PriceError(f"{source}: expected a mapping with a 'prices' list")
    prices = []
    for index, entry in enumerate(raw["prices"]):
        where = f"{source}: prices[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise PriceError(f"{where}: needs a model name")
        unknown = set(entry) - {"model", "effective", "prompt_per_million", "completion_per_million"}
        if unknown:
            raise PriceError(f"{where}: unknown fields {sorted(unknown)}")
        prices.append(
            Price(
                model=entry["model"],
                effective_at=_effective(entry, where),
                prompt_per_million=_amount(entry, "prompt_per_million", where),
                completion_per_million=_amount(entry, "completion_per_million", where),
            )
        )
    return PriceBook(prices, str(raw.get("currency", "USD")))


def load_prices(path: Path | None) -> PriceBook:
    """The price table at ``path``; no path means an empty book (every cost is zero, unpriced)."""
    if path is None:
        return PriceBook([])
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise PriceError(f"{path}: no such file") from exc
    except yaml.YAMLError as exc:
        raise PriceError(f"{path}: invalid YAML: {exc}") from exc
    return parse_prices(raw, str(path))
