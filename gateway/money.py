"""Money: integer picounits (10^-12 of the price table's currency) inside, exact decimals outside.

Amounts never touch a float. The ledger, budgets and costs are whole picounits, which sum exactly
in SQLite, PostgreSQL and Redis alike; ``to_pico`` and ``to_decimal`` convert at the edge and
``format_amount`` is the one way an amount is printed.
"""

from __future__ import annotations

from decimal import Decimal

PICO = 10**12
PLACES = 12  # decimals of one picounit
MAX_AMOUNT_DIGITS = 30  # refuses absurd amounts (1E+999999999) before any arithmetic on them


def to_decimal(pico: int) -> Decimal:
    """Picounits → currency units, exactly."""
    return Decimal(pico).scaleb(-PLACES)


def to_pico(amount: Decimal) -> int:
    """Currency units → picounits, exactly; ValueError for a negative, non-finite or sub-pico amount
    (its message says what the amount must be; the caller names the amount).

    Integer arithmetic on the digits: ``Decimal`` operations would round past 28 digits.
    """
    sign, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int) or (sign and any(digits)):
        raise ValueError("must be a finite amount ≥ 0")
    coefficient = int("".join(map(str, digits)) or "0")
    if coefficient == 0:
        return 0
    if amount.adjusted() > MAX_AMOUNT_DIGITS:
        raise ValueError(f"must be below 10^{MAX_AMOUNT_DIGITS + 1}")
    shift = exponent + PLACES  # at most MAX_AMOUNT_DIGITS + 12 here
    if -shift > len(digits):  # a non-zero coefficient cannot fill that many decimals
        raise ValueError(f"must have at most {PLACES} decimals")
    scale: int = 10 ** abs(shift)
    if shift >= 0:
        return coefficient * scale
    whole, fraction = divmod(coefficient, scale)
    if fraction:
        raise ValueError(f"must have at most {PLACES} decimals")
    return whole


def format_amount(pico: int, min_places: int = PLACES) -> str:
    """Picounits → an exact decimal string with at least ``min_places`` decimals, more only where
    the amount needs them: ``format_amount(n)`` is ``"1.234500000000"`` (reports: every line
    the same width, adding up to the total), ``format_amount(n, 2)`` is ``"25.00"`` or
    ``"0.000125"`` (limits as people write them)."""
    whole, _, fraction = f"{to_decimal(pico):.{PLACES}f}".partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(min_places, '0')}"
