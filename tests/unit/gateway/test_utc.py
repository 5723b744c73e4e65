"""The calendar's edges: times that cannot be written are refused, stored ones always format."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway.utc import LATEST, format_timestamp, parse_timestamp


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+01:00", "soon"])
def test_times_outside_what_can_be_written_back_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_timestamp(value, "expires_at")
    assert (info.value.status_code, info.value.param) == (400, "expires_at")


def test_an_unbounded_value_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_timestamp("x" * 10_000)
    assert len(info.value.message) < 200


def test_the_last_second_of_9999_round_trips() -> None:
    assert parse_timestamp("9999-12-31T23:59:59Z") == LATEST
    assert format_timestamp(LATEST) == "9999-12-31T23:59:59Z"


@pytest.mark.parametrize("stored", [float("inf"), 1e308, float("nan")])
def test_a_bad_stored_time_formats_at_the_far_end(stored: float) -> None:
    assert format_timestamp(stored) == "9999-12-31T23:59:59Z"
    assert format_timestamp(-1e308) == "0001-01-01T00:00:00Z"
