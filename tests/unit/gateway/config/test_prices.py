"""The price table file: exact decimal prices with effective dates, and the PriceBook built from it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config.loader import ConfigError
from gateway.config.prices import DEFAULT_CACHED_PROMPT_FACTOR, PriceEntry, PriceTable, load_prices
from gateway.metering.pricing import PriceBook

ROOT = Path(__file__).resolve().parents[4]
ENTRY = "  - model: m\n    effective: 2026-01-01\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return path


def test_the_shipped_price_table_parses() -> None:
    table = load_prices(ROOT / "configs" / "prices.yaml")
    assert table.currency == "USD"
    tiny = next(p for p in table.prices if p.model == "tiny-llama")
    assert tiny == PriceEntry(
        model="tiny-llama",
        effective=dt.date(2026, 1, 1),
        prompt_per_million=Decimal("0.10"),
        completion_per_million=Decimal("0.40"),
    )


def test_prices_are_exact_and_the_book_looks_them_up_by_start_time(tmp_path: Path) -> None:
    text = (
        "currency: EUR\nprices:\n"
        '  - {model: m, effective: 2026-01-01, prompt_per_million: "0.10",'
        ' completion_per_million: "0.123456"}\n'
        "  - {model: m, effective: '2026-02-01', prompt_per_million: 1}\n"
    )
    table = load_prices(write(tmp_path, text))
    assert table.prices[0].completion_per_million == Decimal("0.123456")
    assert table.prices[1].completion_per_million == 0  # left out: free
    book = PriceBook.from_table(table)
    jan = dt.datetime(2026, 1, 15, tzinfo=dt.UTC).timestamp()
    feb = dt.datetime(2026, 2, 1, tzinfo=dt.UTC).timestamp()
    price = book.price_at("m", jan)
    assert book.currency == "EUR" and price is not None and price.version == "m@2026-01-01"
    assert price.cost_pico(1, 1) == 100_000 + 123_456  # picodollars per token, exactly
    february = book.price_at("m", feb)
    assert (
        book.price_at("m", feb - 1) == price and february is not None and february.version == "m@2026-02-01"
    )
    assert book.price_at("m", jan - 86_400 * 30) is None and book.price_at("other", jan) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            f"prices:\n{ENTRY}  - model: m\n    effective: 2026-02-01\n"
            "  - model: n\n    effective: 2026-01-01\n    completion_per_million: 0.4\n",
            "prices[2].completion_per_million: must be quoted (a YAML float would lose digits)",
        ),
        (
            f"prices:\n{ENTRY}    prompt_per_milion: '1'\n",
            "prices[0].prompt_per_milion: unknown key; expected one of model, effective, prompt_per_million,",
        ),
        (
            f"prices:\n{ENTRY}    prompt_per_million: 'abc'\n",
            "prices[0].prompt_per_million: is not a number: 'abc'",
        ),
        (
            f"prices:\n{ENTRY}    prompt_per_million: '0.1234567'\n",
            "prices[0].prompt_per_million: must be ≥ 0 with at most 6 decimals, not '0.1234567'",
        ),
        (f"prices:\n{ENTRY}    prompt_per_million: '-1'\n", "prices[0].prompt_per_million: must be ≥ 0"),
        (f"prices:\n{ENTRY}    prompt_per_million: 'NaN'\n", "prices[0].prompt_per_million: must be ≥ 0"),
        (f"prices:\n{ENTRY}    prompt_per_million: true\n", "prices[0].prompt_per_million: must be a quoted"),
        (
            "prices:\n  - model: m\n    effective: soon\n",
            "prices[0].effective: must be a date (YYYY-MM-DD), not 'soon'",
        ),
        ("prices:\n  - model: m\n", "prices[0].effective: required key is missing"),
        ("prices:\n  - effective: 2026-01-01\n", "prices[0].model: required key is missing"),
        (f"prices:\n{ENTRY}{ENTRY}", "prices[1]: a second price for m taking effect on 2026-01-01"),
        ("currency: USD\n", "prices: required key is missing"),
        ("prices: {}\n", "prices: Input should be a valid list"),
        (
            "currency: USD\nprices: []\ncurency: EUR\n",
            "curency: unknown key; expected one of currency, cached_prompt_factor, prices",
        ),
        (
            f"prices:\n{ENTRY}    cached_prompt_factor: '1.5'\n",
            "prices[0].cached_prompt_factor: must be between 0 and 1, not '1.5'",
        ),
        (
            f"prices:\n{ENTRY}    cached_prompt_factor: '0.1234567'\n",
            "prices[0].cached_prompt_factor: must be ≥ 0 with at most 6 decimals, not '0.1234567'",
        ),
        (
            f"prices:\n{ENTRY}    cached_prompt_factor: 0.5\n",
            "prices[0].cached_prompt_factor: must be quoted",
        ),
        (
            f"prices:\n{ENTRY}    cached_prompt_factor: '-0.1'\n",
            "prices[0].cached_prompt_factor: must be ≥ 0",
        ),
        (
            f"prices:\n{ENTRY}    cached_prompt_per_million: '0.00000001'\n",
            "prices[0].cached_prompt_per_million: must be ≥ 0 with at most 6 decimals",
        ),
        (
            f"prices:\n{ENTRY}    cached_prompt_per_million: '0.01'\n    cached_prompt_factor: '0.1'\n",
            "prices[0]: give cached_prompt_per_million or cached_prompt_factor, not both",
        ),
        (f"cached_prompt_factor: '2'\nprices:\n{ENTRY}", "cached_prompt_factor: must be between 0 and 1"),
    ],
)
def test_a_malformed_table_fails_naming_the_file_and_the_key_path(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_prices(path)
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)


def test_a_missing_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_prices(tmp_path / "absent.yaml")


def test_an_empty_table_prices_nothing() -> None:
    book = PriceBook.from_table(PriceTable(prices=[]))
    assert book.currency == "USD" and book.price_at("m", 0.0) is None


def test_cached_prices_explicit_as_a_factor_or_by_default(tmp_path: Path) -> None:
    text = (
        "cached_prompt_factor: '0.25'\nprices:\n"
        '  - {model: own, effective: 2026-01-01, prompt_per_million: "1", cached_prompt_factor: "0.5"}\n'
        '  - {model: explicit, effective: 2026-01-01, prompt_per_million: "1",'
        ' cached_prompt_per_million: "0.000123"}\n'
        '  - {model: table, effective: 2026-01-01, prompt_per_million: "1"}\n'
    )
    book = PriceBook.from_table(load_prices(write(tmp_path, text)))
    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC).timestamp()
    rates = {
        m: price.cached_prompt_pico for m in ("own", "explicit", "table") if (price := book.price_at(m, at))
    }
    assert rates == {"own": 500_000, "explicit": 123, "table": 250_000}
    default = load_prices(write(tmp_path, f"prices:\n{ENTRY}    prompt_per_million: '1'\n"))
    assert default.cached_prompt_factor == DEFAULT_CACHED_PROMPT_FACTOR == Decimal("0.1")
    price = PriceBook.from_table(default).price_at("m", at)
    assert price is not None and price.cached_prompt_pico == 100_000
