"""The price table file (``configs/prices.yaml``): per-model prices with effective dates.

Prices are ``Decimal`` per million tokens with at most six decimal places, so one token costs a
whole number of picodollars (``gateway.metering.pricing`` does the arithmetic). A YAML float is
refused: ``0.1`` would already have lost digits when the YAML parser handed it over::

    currency: USD
    cached_prompt_factor: "0.1"        # optional; the default for entries that name no cached price
    prices:
      - model: tiny-llama
        effective: 2026-01-01          # 00:00 UTC; applies to requests that start on or after it
        prompt_per_million: "0.10"
        completion_per_million: "0.40"
        cached_prompt_per_million: "0.025"   # or cached_prompt_factor: "0.25"; not both

Cached prompt tokens (those the engine served from its prefix cache, reported as
``usage.prompt_tokens_details.cached_tokens``) are billed at the entry's cached-input price:
``cached_prompt_per_million`` when given (the same rules as every price), else
``cached_prompt_factor`` × ``prompt_per_million``, the factor taken from the entry, else from the
table, else ``DEFAULT_CACHED_PROMPT_FACTOR``. A factor is a quoted decimal in [0, 1] with at most
six decimals; the per-token price it gives is rounded half-even to a whole picodollar.

The default factor is 0.1 because that is what the providers a tenant compares us with charge for a
cache read: Bedrock bills cache reads at 0.1× the input price, and OpenAI bills cached input of its
current models (the GPT-5 family) at 0.1× too (older ones: 0.25–0.5×). Serving a cached prefix
skips its prefill, so the discount is real, and our prefix-aware router exists to earn it. A table
that wants cached tokens billed as ordinary input says ``cached_prompt_factor: "1"``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gateway.config.loader import load_model

MAX_DECIMALS = 6
# Cached input at a tenth of the input price unless the table says otherwise (see the docstring).
DEFAULT_CACHED_PROMPT_FACTOR = Decimal("0.1")


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


def _factor(value: object) -> Decimal:
    """A share of the input price: a quoted decimal (or 0 or 1) in [0, 1], at most six decimals."""
    factor = _amount(value)
    if factor > 1:
        raise ValueError(f"must be between 0 and 1, not {value!r}")
    return factor


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
Factor = Annotated[Decimal, BeforeValidator(_factor)]


class PriceEntry(BaseModel):
    """One price version of one model, in force from 00:00 UTC of ``effective``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    effective: Annotated[dt.date, BeforeValidator(_day)]
    prompt_per_million: PerMillion = Decimal(0)
    completion_per_million: PerMillion = Decimal(0)
    # The cached-input price: explicit, or a share of ``prompt_per_million`` (None: the table's).
    cached_prompt_per_million: PerMillion | None = None
    cached_prompt_factor: Factor | None = None

    @model_validator(mode="after")
    def _one_cached_price(self) -> PriceEntry:
        if self.cached_prompt_per_million is not None and self.cached_prompt_factor is not None:
            raise ValueError("give cached_prompt_per_million or cached_prompt_factor, not both")
        return self


class PriceTable(BaseModel):
    """The whole file: the currency every amount is in, the default cached-input factor, and every
    price version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field(default="USD", min_length=1)
    cached_prompt_factor: Factor = DEFAULT_CACHED_PROMPT_FACTOR
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
