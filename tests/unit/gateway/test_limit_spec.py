"""LimitSpec: the one shape of limits, as written, as stored, and exact money in between."""

from __future__ import annotations

from dataclasses import fields

import pytest

from gateway.errors import InvalidRequestError
from gateway.limit_spec import LIMIT_NAMES, WRITTEN_NAMES, LimitSpec, LimitValueError, cost_pico
from gateway.money import format_amount
from gateway.protocol import LimitsObject

EVERY = LimitSpec(rpm=60, tpm=10000, max_concurrent=4, monthly_tokens=1000000, monthly_cost_pico=25 * 10**12)


def test_fields_are_the_stored_names_in_display_order() -> None:
    assert tuple(field.name for field in fields(LimitSpec)) == LIMIT_NAMES
    assert WRITTEN_NAMES == ("rpm", "tpm", "max_concurrent", "monthly_tokens", "monthly_cost")


def test_written_and_stored_forms_round_trip() -> None:
    written = {
        "rpm": 60,
        "tpm": 10000,
        "max_concurrent": 4,
        "monthly_tokens": 1000000,
        "monthly_cost": "25.00",
    }
    stored = {**{k: v for k, v in written.items() if k != "monthly_cost"}, "monthly_cost_pico": 25 * 10**12}
    assert LimitSpec.from_written(written) == EVERY and EVERY.written() == written
    assert LimitSpec.from_stored(stored) == EVERY and EVERY.stored() == stored
    assert list(EVERY.stored()) == list(LIMIT_NAMES)  # display order
    # Only what is set: None is unlimited at this level and is left out of both forms.
    assert LimitSpec(rpm=5, monthly_cost_pico=290_000_000_000).written() == {"rpm": 5, "monthly_cost": "0.29"}
    assert LimitSpec.from_written({"rpm": None, "monthly_cost": None}) == LimitSpec()
    assert LimitSpec().stored() == {} and LimitSpec().written() == {}
    assert LimitSpec.from_stored({}) == LimitSpec()


def test_the_written_form_takes_the_stored_cost_name_but_not_both() -> None:
    assert LimitSpec.from_written({"monthly_cost_pico": 7}) == LimitSpec(monthly_cost_pico=7)
    with pytest.raises(LimitValueError) as refused:
        LimitSpec.from_written({"monthly_cost": "1", "monthly_cost_pico": 5})
    assert refused.value.field == "monthly_cost"
    assert refused.value.detail == "give monthly_cost or monthly_cost_pico, not both"


def test_the_wire_model_converts_in_one_place() -> None:
    wire = LimitsObject.from_spec(EVERY)
    assert wire.model_dump() == EVERY.written() and wire.to_spec() == EVERY
    assert LimitsObject.from_spec(LimitSpec()).model_dump() == dict.fromkeys(WRITTEN_NAMES)


def test_a_whole_number_written_with_a_fraction_is_a_limit() -> None:
    """JSON Schema's ``integer`` takes ``60.0`` (``PUT /admin/tenants/{name}/limits``); a
    fraction, a string or a boolean is still refused."""
    assert LimitsObject.model_validate({"rpm": 60.0, "tpm": 1e4}).to_spec() == LimitSpec(rpm=60, tpm=10000)
    for value in (60.5, "60", True):
        with pytest.raises(ValueError):
            LimitsObject.model_validate({"rpm": value})


@pytest.mark.parametrize(
    ("written", "pico"),
    [
        ("25.00", 25 * 10**12),
        ("0.29", 290_000_000_000),
        ("0.000000000001", 1),
        ("0", 0),
        (" 3 ", 3 * 10**12),
        ("1234567.891234567891", 1_234_567_891_234_567_891),
        ("1E+3", 10**15),
        (25, 25 * 10**12),
        ("9223372.036854775807", 2**63 - 1),
    ],
)
def test_monthly_cost_converts_exactly(written: str | int, pico: int) -> None:
    """0.29 as a float is 0.28999999999999998: ``int(0.29 * 10**12)`` would be 289999999999."""
    assert cost_pico(written) == pico
    assert cost_pico(format_amount(pico, 2)) == pico  # and prints back to the same amount


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("abc", "is not a decimal amount: 'abc'"),
        ("", "is not a decimal amount: ''"),
        ("-0.01", "must be a finite amount ≥ 0, not '-0.01'"),
        ("NaN", "must be a finite amount ≥ 0"),
        ("Infinity", "must be a finite amount ≥ 0"),
        ("0.0000000000001", "must have at most 12 decimals, not '0.0000000000001'"),
        ("1E-999999999", "must have at most 12 decimals"),
        ("1E+999999999", "must be below 10^31"),
        ("9223372.036854775808", "must be at most 9223372.036854775807"),
        (25.5, "must be a quoted decimal string (a float would lose digits)"),
        (True, "not True"),
    ],
)
def test_monthly_cost_refuses_what_is_not_an_exact_amount(written: object, message: str) -> None:
    with pytest.raises(LimitValueError) as refused:
        cost_pico(written)
    assert refused.value.field == "monthly_cost" and message in refused.value.detail


@pytest.mark.parametrize(
    ("stored", "field", "detail"),
    [
        ({"rpm": -1}, "rpm", "must be a whole number from 0 to 9223372036854775807, not -1"),
        ({"tpm": 1.5}, "tpm", "must be a whole number from 0 to 9223372036854775807, not 1.5"),
        ({"rpm": True}, "rpm", "must be a whole number from 0 to 9223372036854775807, not True"),
        ({"max_concurrent": "4"}, "max_concurrent", "must be a whole number from 0 to"),
        ({"max_concurrent": 2**63}, "max_concurrent", "must be a whole number from 0 to"),
        ({"monthly_cost_pico": -5}, "monthly_cost", "must be a whole number of picodollars from 0 to"),
        ({"burst": 5}, "burst", "unknown limit; the limits are rpm, tpm, max_concurrent, monthly_tokens"),
        ({"monthly_cost": 5}, "monthly_cost", "unknown limit"),  # the stored form has only the pico name
    ],
)
def test_a_bad_limit_is_a_400_naming_the_field_as_written(
    stored: dict[str, object], field: str, detail: str
) -> None:
    with pytest.raises(LimitValueError) as refused:
        LimitSpec.from_stored(stored)
    error = refused.value
    assert (error.field, error.param) == (field, field) and error.detail.startswith(detail)
    assert isinstance(error, InvalidRequestError) and isinstance(error, ValueError)
    assert error.status_code == 400 and error.message == f"Invalid limit {field}: {error.detail}"


def test_a_spec_cannot_be_built_out_of_range() -> None:
    with pytest.raises(ValueError, match="rpm"):
        LimitSpec(rpm=-1)
    with pytest.raises(ValueError, match="tpm"):
        LimitSpec(tpm=1.5)  # type: ignore[arg-type]
    assert LimitSpec(rpm=0, monthly_cost_pico=2**63 - 1).rpm == 0


def test_what_the_limiter_asks_of_a_spec() -> None:
    assert LimitSpec().unlimited and not LimitSpec(rpm=0).unlimited
    assert LimitSpec(monthly_cost_pico=1).needs_lease and not LimitSpec(rpm=1, tpm=1).needs_lease
    assert LimitSpec(max_concurrent=1).needs_lease and not LimitSpec(max_concurrent=1).monthly
    assert LimitSpec(monthly_tokens=1).monthly and LimitSpec(monthly_cost_pico=0).monthly


def test_a_spec_is_frozen_and_hashable() -> None:
    with pytest.raises(AttributeError):
        EVERY.rpm = 1  # type: ignore[misc]
    assert len({EVERY, LimitSpec.from_stored(EVERY.stored())}) == 1
