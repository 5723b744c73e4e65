"""The calendar: UTC days and months, and the ISO-8601 timestamps people read and write.

Budgets run per UTC calendar month, reports over whole UTC days, prices take effect at 00:00 UTC
of a date; every such window is computed here and nowhere else.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, date, datetime

from gateway.errors import InvalidRequestError

# The span a timestamp can be written in (years 1 to 9999, UTC): a moment outside it would be
# stored and then fail every read that formats it.
EARLIEST = datetime(1, 1, 1, tzinfo=UTC).timestamp()
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
DAY_S = 86400.0


def midnight(day: date) -> float:
    """Epoch seconds at 00:00 UTC of ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def day_of(at: float) -> str:
    """The UTC day of an epoch time, ``2026-11-30``."""
    return datetime.fromtimestamp(at, tz=UTC).date().isoformat()


def month_of(at: float) -> str:
    """The UTC month of an epoch time, ``2026-11``."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m")


@functools.lru_cache(maxsize=64)
def month_start(month: str) -> float:
    """Epoch seconds at 00:00 UTC on the first day of ``month`` (``2026-11``)."""
    year, number = (int(part) for part in month.split("-"))
    return datetime(year, number, 1, tzinfo=UTC).timestamp()


@functools.lru_cache(maxsize=64)
def month_end(month: str) -> float:
    """Epoch seconds at which the month after ``month`` starts (00:00 UTC on its first day)."""
    year, number = (int(part) for part in month.split("-"))
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return datetime(year, number, 1, tzinfo=UTC).timestamp()


def parse_timestamp(value: str, param: str = "expires_at") -> float:
    """``2027-01-31`` (00:00 UTC) or an ISO-8601 date-time (UTC when it names no zone) → epoch s."""
    shown = value if len(value) <= 64 else value[:64] + "…"
    try:
        if len(value) == 10:
            return midnight(date.fromisoformat(value))
        moment = datetime.fromisoformat(value)
        at = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{shown!r} is not an ISO-8601 date (YYYY-MM-DD) or date-time.", param=param
        ) from None
    if not EARLIEST <= at <= LATEST:  # 9999-12-31T23:59:59-12:00 is in the year 10000 in UTC
        raise InvalidRequestError(f"{shown!r} is not between the years 1 and 9999 in UTC.", param=param)
    return at


def format_timestamp(ts: float, timespec: str = "seconds") -> str:
    """Epoch seconds → ``2027-01-31T00:00:00Z`` (``timespec="milliseconds"``: ``…T00:00:00.250Z``).
    A stored time outside the years 1-9999 (a row written before times were checked) is shown at
    the nearest end rather than failing the read."""
    ts = min(max(ts, EARLIEST), LATEST) if not math.isnan(ts) else LATEST
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
