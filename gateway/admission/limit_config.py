"""Limits as people write them (``configs/limits.yaml``, admin API, CLI) and as the gateway keeps them.

Stored limits (``gateway.records.LimitValues``) count money in picodollars (``monthly_cost_pico``);
wherever a person reads or writes one it is ``monthly_cost``, a decimal amount in the price table's
currency ("25.00"), converted exactly (never through a float). A tenant without limits of its own
gets the defaults from ``configs/limits.yaml``:

    # Applied to every tenant without limits of its own (admin API / CLI set those).
    defaults:
      rpm: 600
      tpm: 200000
      max_concurrent: 32
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from gateway.admission.limits import Limits
from gateway.money import format_amount, to_pico
from gateway.records import LIMIT_NAMES, ApiKey, LimitValues

COST_FIELD = "monthly_cost"
COST_NAME = "monthly_cost_pico"
# The names people write, in display order: the stored ones with the money in currency units.
FIELDS = tuple(COST_FIELD if name == COST_NAME else name for name in LIMIT_NAMES)
# Counters in Redis and PostgreSQL are 64-bit integers.
MAX_LIMIT = 2**63 - 1


class LimitValueError(ValueError):
    """One limit is malformed; ``field`` names it as written (``monthly_cost``, not ``..._pico``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class LimitConfigError(ValueError):
    """The defaults file is malformed; the message names the file and the field."""


def written_name(name: str) -> str:
    """A stored limit's name as people write it."""
    return COST_FIELD if name == COST_NAME else name


def check_limit_values(values: Mapping[str, object]) -> LimitValues:
    """Stored-form limits as the limiter will take them (a copy), or ``LimitValueError``."""
    for name, value in values.items():
        if name not in LIMIT_NAMES:
            raise LimitValueError(str(name), f"unknown limit; the limits are {', '.join(FIELDS)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
            what = "a whole number of picodollars" if name == COST_NAME else "a whole number"
            raise LimitValueError(written_name(name), f"must be {what} from 0 to {MAX_LIMIT}, not {value!r}")
    checked: LimitValues = dict(values)  # type: ignore[arg-type]  # every value checked above
    try:
        Limits.from_values(checked)  # the limiter's own rules, last
    except ValueError as exc:
        raise LimitValueError(written_name(next(iter(checked))), str(exc)) from None
    return checked


def cost_pico(value: object) -> int:
    """``monthly_cost`` as written ("25.00", 25 or a ``Decimal``) → exact picodollars."""
    if isinstance(value, float):
        raise LimitValueError(COST_FIELD, "must be a quoted decimal string (a float would lose digits)")
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise LimitValueError(COST_FIELD, f'must be a decimal amount such as "25.00", not {value!r}')
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise LimitValueError(COST_FIELD, f"is not a decimal amount: {value!r}") from None
    try:
        pico = to_pico(amount)
    except ValueError as exc:
        raise LimitValueError(COST_FIELD, f"{exc}, not {value!r}") from None
    if pico > MAX_LIMIT:
        raise LimitValueError(COST_FIELD, f"must be at most {format_amount(MAX_LIMIT, 2)}, not {value!r}")
    return pico


def limit_values(fields: Mapping[str, object]) -> LimitValues:
    """Limits as written → stored form. A field that is None is left out (unlimited at this level)."""
    values: dict[str, object] = {}
    for field, value in fields.items():
        if value is None:
            continue
        if field == COST_FIELD:
            if fields.get(COST_NAME) is not None:
                raise LimitValueError(COST_FIELD, f"give {COST_FIELD} or {COST_NAME}, not both")
            values[COST_NAME] = cost_pico(value)
        else:
            values[field] = value
    return check_limit_values(values)


def limit_fields(values: LimitValues) -> dict[str, int | str]:
    """Stored form → as written, in display order; ``monthly_cost`` as a decimal string."""
    fields: dict[str, int | str] = {}
    for name in LIMIT_NAMES:
        if name in values:
            fields[written_name(name)] = format_amount(values[name], 2) if name == COST_NAME else values[name]
    return fields


def parse_default_limits(raw: Any, source: str = "limits") -> LimitValues | None:
    """The ``defaults`` of a parsed limits file; None (or empty) means unlimited."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise LimitConfigError(f"{source}: expected a mapping with a 'defaults' mapping")
    unknown = set(raw) - {"defaults"}
    if unknown:
        raise LimitConfigError(f"{source}: unknown fields {sorted(map(str, unknown))}; expected 'defaults'")
    defaults = raw.get("defaults")
    if defaults is None:
        return None
    if not isinstance(defaults, dict):
        raise LimitConfigError(f"{source}: defaults must be a mapping of limits ({', '.join(FIELDS)})")
    try:
        values = limit_values({str(name): value for name, value in defaults.items()})
    except LimitValueError as exc:
        raise LimitConfigError(f"{source}: defaults.{exc.field}: {exc.message}") from None
    return values or None


def load_default_limits(path: Path | None) -> LimitValues | None:
    """The defaults in the limits file at ``path``; no path or no file: None (unlimited)."""
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LimitConfigError(f"{path}: cannot be read: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LimitConfigError(f"{path}: invalid YAML: {exc}") from exc
    return parse_default_limits(raw, str(path))


class _ParsedLimits:
    """Stored limit dicts → ``Limits``, by identity: the key cache hands out the same dicts.

    Each entry holds its dict, so an id cannot be reused by another dict while it is cached.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: dict[int, tuple[LimitValues, Limits]] = {}
        self._max_entries = max_entries

    def get(self, values: LimitValues) -> Limits:
        entry = self._entries.get(id(values))
        if entry is not None and entry[0] is values:
            return entry[1]
        limits = Limits.from_values(values)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[id(values)] = (values, limits)
        return limits


_parsed = _ParsedLimits()


def effective_limits(key: ApiKey, defaults: LimitValues | None) -> tuple[Limits, Limits | None]:
    """(the tenant's limits — its own, else ``defaults`` —, the key's own limits or None)."""
    tenant_values = key.tenant_limits if key.tenant_limits is not None else defaults
    tenant = _parsed.get(tenant_values) if tenant_values else Limits()
    return tenant, _parsed.get(key.limits) if key.limits else None
