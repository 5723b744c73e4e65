"""The price table file (``configs/prices.yaml``): per-model prices with effective dates.

Prices are ``Decimal`` per million tokens with at most six decimal places, so one token costs a
whole number of picodollars (``gateway.metering.pricing`` does the arithmetic). A YAML float is
refused: ``0.1`` would already have lost digits when the YAML parser handed it over::

    currency: USD
    prices:
      - model: tiny-llama
        effective: 2026-01-01          # 00:00 UTC; applies to requests that start on or after it
        prompt_per_million: "0.10"
        completion_per_million: "0.40"
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gateway.config.loader import load_model

MAX_DECIMALS = 6


def _amount(value: object) -> Decimal:
    """A price as written: a quoted decimal or an integer, ≥ 0, at most six decimals."""
    if isinstance(value, float):
        raise ValueError("must be quoted (a YAML float would lose digits)")
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f'must be a quoted decimal such as "0.10", not {value!r}')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"is not a number: {value!r}") from None
    exponent = amount.as_tuple().exponent
    if not isinstance(exponent, int) or amount < 0 or -exponent > MAX_DECIMALS:
        raise ValueError(f"must be ≥ 0 with at most {MAX_DECIMALS} decimals, not {value!r}")
    return amount


def _day(value: object) -> dt.date:
    """``2026-01-01`` as YAML reads it (a date) or quoted (a string); not a time of day."""
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value)
        except ValueError:
            pass
    if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
        raise ValueError(f"must be a date (YYYY-MM-DD), not {value!r}")
    return value


PerMillion = Annotated[Decimal, BeforeValidator(_amount)]


class PriceEntry(BaseModel):
    """One price version of one model, in force from 00:00 UTC of ``effective``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    effective: Annotated[dt.date, BeforeValidator(_day)]
    prompt_per_million: PerMillion = Decimal(0)
    completion_per_million: PerMillion = Decimal(0)


class PriceTable(BaseModel):
    """The whole file: the currency every amount is in, and every price version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field(default="USD", min_length=1)
    prices: list[PriceEntry]

    @model_validator(mode="after")
    def _one_version_per_day(self) -> PriceTable:
        seen: set[tuple[str, dt.date]] = set()
        for index, entry in enumerate(self.prices):
            if (entry.model, entry.effective) in seen:
                raise ValueError(
                    f"prices[{index}]: a second price for {entry.model} taking effect on {entry.effective}"
                )
            seen.add((entry.model, entry.effective))
        return self


def load_prices(path: Path) -> PriceTable:
    """The price table at ``path``, or ``ConfigError`` naming the file, the key path and what was expected."""
    return load_model(path, PriceTable)
