"""Limits as written and as stored: the defaults file, exact money, and which limits apply to a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.admission.limit_config import (
    LimitConfigError,
    LimitValueError,
    cost_pico,
    effective_limits,
    limit_fields,
    limit_values,
    load_default_limits,
)
from gateway.admission.limits import Limits
from gateway.money import format_amount
from gateway.records import ApiKey, LimitValues

ROOT = Path(__file__).resolve().parents[4]


def key(limits: LimitValues | None = None, tenant_limits: LimitValues | None = None) -> ApiKey:
    return ApiKey(
        id="key_1",
        tenant_id="ten_1",
        tenant_name="acme",
        key_hash="h" * 64,
        prefix="sk-gw-x",
        created_at=0.0,
        limits=limits,
        tenant_limits=tenant_limits,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    return path


def test_the_shipped_defaults_file_parses() -> None:
    assert load_default_limits(ROOT / "configs" / "limits.yaml") == {
        "rpm": 600,
        "tpm": 200000,
        "max_concurrent": 32,
    }


def test_every_limit_is_read_and_money_becomes_exact_picodollars(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "defaults:\n  rpm: 60\n  tpm: 10000\n  max_concurrent: 4\n  monthly_tokens: 1000000\n"
        '  monthly_cost: "25.00"\n',
    )
    assert load_default_limits(path) == {
        "rpm": 60,
        "tpm": 10000,
        "max_concurrent": 4,
        "monthly_tokens": 1000000,
        "monthly_cost_pico": 25_000_000_000_000,
    }
    # The stored name is accepted too, and a null field is unlimited (left out).
    path = write(tmp_path, "defaults:\n  monthly_cost_pico: 7\n  rpm: null\n")
    assert load_default_limits(path) == {"monthly_cost_pico": 7}


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
    assert refused.value.field == "monthly_cost" and message in refused.value.message


def test_costs_print_with_at_least_two_decimals_and_no_float_noise() -> None:
    assert [format_amount(p, 2) for p in (0, 1, 125_000_000, 25 * 10**12, 10**12 + 5 * 10**10)] == [
        "0.00",
        "0.000000000001",
        "0.000125",
        "25.00",
        "1.05",
    ]
    values = {"monthly_cost_pico": 290_000_000_000, "rpm": 5}
    assert limit_fields(values) == {"rpm": 5, "monthly_cost": "0.29"}  # in display order
    assert limit_values(limit_fields(values)) == values


@pytest.mark.parametrize(
    "text", ["", "# nothing yet\n", "defaults:\n", "defaults: {}\n", "defaults: {rpm: null}\n"]
)
def test_no_defaults_means_unlimited(tmp_path: Path, text: str) -> None:
    assert load_default_limits(write(tmp_path, text)) is None


def test_no_file_or_no_path_means_unlimited(tmp_path: Path) -> None:
    assert load_default_limits(tmp_path / "absent.yaml") is None
    assert load_default_limits(None) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "defaults: {rpm: -1}\n",
            "defaults.rpm: must be a whole number from 0 to 9223372036854775807, not -1",
        ),
        ("defaults: {tpm: 1.5}\n", "defaults.tpm: must be a whole number from 0 to"),
        (
            "defaults: {rpm: true}\n",
            "defaults.rpm: must be a whole number from 0 to 9223372036854775807, not True",
        ),
        ("defaults: {max_concurrent: '4'}\n", "defaults.max_concurrent: must be a whole number"),
        ("defaults: {burst: 5}\n", "defaults.burst: unknown limit; the limits are rpm, tpm, max_concurrent"),
        ("defaults: {monthly_cost: 25.5}\n", "defaults.monthly_cost: must be a quoted decimal string"),
        ("defaults: {monthly_cost: 'x'}\n", "defaults.monthly_cost: is not a decimal amount: 'x'"),
        (
            "defaults: {monthly_cost: '1', monthly_cost_pico: 5}\n",
            "defaults.monthly_cost: give monthly_cost or monthly_cost_pico, not both",
        ),
        ("default: {rpm: 1}\n", "unknown fields ['default']; expected 'defaults'"),
        ("defaults: [1]\n", "defaults must be a mapping of limits"),
        ("- rpm\n", "expected a mapping with a 'defaults' mapping"),
        ("defaults: {rpm: [\n", "invalid YAML"),
    ],
)
def test_a_malformed_file_fails_naming_the_file_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(LimitConfigError) as refused:
        load_default_limits(path)
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)


def test_the_tenants_own_limits_win_over_the_defaults() -> None:
    defaults = {"rpm": 600, "tpm": 200000}
    assert effective_limits(key(tenant_limits={"rpm": 5}), defaults) == (Limits(rpm=5), None)
    assert effective_limits(key(), defaults) == (Limits(rpm=600, tpm=200000), None)
    # An empty set of its own makes the tenant unlimited: it does not fall back to the defaults.
    assert effective_limits(key(tenant_limits={}), defaults) == (Limits(), None)
    assert effective_limits(key(), None) == (Limits(), None)


def test_a_keys_own_limits_come_alongside_its_tenants() -> None:
    both = key(limits={"tpm": 7, "monthly_cost_pico": 10**12}, tenant_limits={"rpm": 5})
    assert effective_limits(both, {"rpm": 600}) == (Limits(rpm=5), Limits(tpm=7, monthly_cost_pico=10**12))
    assert effective_limits(key(limits={"rpm": 1}), None) == (Limits(), Limits(rpm=1))
    assert effective_limits(key(limits={}), None) == (Limits(), None)  # nothing of its own


def test_parsed_limits_are_reused_per_dict_and_never_confused() -> None:
    shared = {"rpm": 5}
    first, _ = effective_limits(key(tenant_limits=shared), None)
    again, _ = effective_limits(key(tenant_limits=shared), None)
    assert first is again  # the key cache hands out the same dict: parsed once
    for rpm in range(50):  # fresh dicts, possibly at addresses of freed ones, each read afresh
        assert effective_limits(key(tenant_limits={"rpm": rpm}), None)[0] == Limits(rpm=rpm)
