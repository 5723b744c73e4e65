"""``LimitSpec``: one tenant's or one key's limits, the one shape every layer uses.

Records, stores, tenancy, admission and the limiter hold a ``LimitSpec``; the edges convert it:

- stored (database JSON, ``stored()`` / ``from_stored``): the set fields by name, money as
  ``monthly_cost_pico``, the same keys rows have always had;
- written (``configs/limits.yaml``, the admin API, the CLI; ``written()`` / ``from_written``):
  money as ``monthly_cost``, a decimal amount in the price table's currency ("25.00"), converted
  exactly (never through a float).

A field that is None is unlimited at this level. Every check lives here, so a malformed limit is
refused with the same words wherever it was written, naming the field as written (``monthly_cost``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation

from gateway.errors import InvalidRequestError
from gateway.money import format_amount, to_pico

# Counters in Redis and PostgreSQL are 64-bit integers.
MAX_LIMIT = 2**63 - 1
COST_FIELD = "monthly_cost"
COST_NAME = "monthly_cost_pico"
# Stored names, in display order; the written names have the money in currency units.
LIMIT_NAMES = ("rpm", "tpm", "max_concurrent", "monthly_tokens", COST_NAME)
WRITTEN_NAMES = tuple(COST_FIELD if name == COST_NAME else name for name in LIMIT_NAMES)


class LimitValueError(InvalidRequestError, ValueError):
    """One limit is malformed: a 400 whose ``param`` is the field as written (``monthly_cost``,
    never ``monthly_cost_pico``); ``detail`` says what the field must be."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"Invalid limit {field}: {detail}", param=field)
        self.field = field
        self.detail = detail


def written_name(name: str) -> str:
    """A stored limit's name as people write it."""
    return COST_FIELD if name == COST_NAME else name


def _whole(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        what = "a whole number of picodollars" if name == COST_NAME else "a whole number"
        raise LimitValueError(written_name(name), f"must be {what} from 0 to {MAX_LIMIT}, not {value!r}")
    return value


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


def _refuse_unknown(names: Mapping[str, object], known: tuple[str, ...]) -> None:
    for name in names:
        if name not in known:
            raise LimitValueError(str(name), f"unknown limit; the limits are {', '.join(WRITTEN_NAMES)}")


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One scope's limits; ``None`` is unlimited.

    ``rpm`` and ``tpm`` are token buckets refilling continuously at limit/60 per second with a burst
    of the per-minute limit; ``tpm`` counts prompt + completion tokens. Monthly budgets count UTC
    calendar months; ``monthly_cost_pico`` is in picodollars like every cost in the gateway.
    """

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    monthly_tokens: int | None = None
    monthly_cost_pico: int | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            _whole(item.name, getattr(self, item.name))

    @classmethod
    def from_stored(cls, values: Mapping[str, object]) -> LimitSpec:
        """From the stored form (a row's JSON); a name left out is unlimited."""
        _refuse_unknown(values, LIMIT_NAMES)
        return cls(**{name: _whole(name, values.get(name)) for name in LIMIT_NAMES})

    def stored(self) -> dict[str, int]:
        """The stored form: the set fields only, in display order."""
        return {name: value for name in LIMIT_NAMES if (value := getattr(self, name)) is not None}

    @classmethod
    def from_written(cls, values: Mapping[str, object]) -> LimitSpec:
        """From limits as people write them; ``monthly_cost`` is a decimal amount and a field that
        is None is unlimited. The stored ``monthly_cost_pico`` is accepted too, but not both."""
        _refuse_unknown(values, (*WRITTEN_NAMES, COST_NAME))
        given = {str(name): value for name, value in values.items() if value is not None}
        if COST_FIELD in given:
            if COST_NAME in given:
                raise LimitValueError(COST_FIELD, f"give {COST_FIELD} or {COST_NAME}, not both")
            given[COST_NAME] = cost_pico(given.pop(COST_FIELD))
        return cls.from_stored(given)

    def written(self) -> dict[str, int | str]:
        """As people write them, in display order; ``monthly_cost`` as a decimal string ("25.00")."""
        return {
            written_name(name): format_amount(value, 2) if name == COST_NAME else value
            for name, value in self.stored().items()
        }

    @property
    def unlimited(self) -> bool:
        """No limit at all at this level (the limiter then skips the scope)."""
        return self.rpm is None and self.tpm is None and not self.needs_lease

    @property
    def monthly(self) -> bool:
        """Whether usage must be counted toward a monthly budget of this scope."""
        return self.monthly_tokens is not None or self.monthly_cost_pico is not None

    @property
    def needs_lease(self) -> bool:
        """Whether admission holds something until settled: a concurrency slot or a budget reservation."""
        return self.max_concurrent is not None or self.monthly
