"""The limits file: the defaults of tenants without limits of their own, written as everywhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.limits import load_default_limits
from gateway.config.loader import ConfigError
from gateway.limit_spec import LimitSpec

ROOT = Path(__file__).resolve().parents[4]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    return path


def test_the_shipped_defaults_file_parses() -> None:
    assert load_default_limits(ROOT / "configs" / "limits.yaml") == LimitSpec(
        rpm=600, tpm=200000, max_concurrent=32
    )


def test_every_limit_is_read_and_money_becomes_exact_picodollars(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "defaults:\n  rpm: 60\n  tpm: 10000\n  max_concurrent: 4\n  monthly_tokens: 1000000\n"
        '  monthly_cost: "25.00"\n',
    )
    assert load_default_limits(path) == LimitSpec(
        rpm=60, tpm=10000, max_concurrent=4, monthly_tokens=1000000, monthly_cost_pico=25_000_000_000_000
    )
    # The stored name is accepted too, and a null field is unlimited (left out).
    path = write(tmp_path, "defaults:\n  monthly_cost_pico: 7\n  rpm: null\n")
    assert load_default_limits(path) == LimitSpec(monthly_cost_pico=7)


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
        ("default: {rpm: 1}\n", "default: unknown key; expected one of defaults"),
        ("defaults: [1]\n", "defaults: must be a mapping of limits (rpm, tpm, max_concurrent"),
        ("- rpm\n", "expected a mapping with the keys defaults, not ['rpm']"),
        ("defaults: {rpm: [\n", "invalid YAML"),
    ],
)
def test_a_malformed_file_fails_naming_the_file_and_the_key_path(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_default_limits(path)
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)
