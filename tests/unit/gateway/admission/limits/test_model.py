"""Headers in OpenAI's format, and the 429 a refusal becomes."""

from __future__ import annotations

import pytest

from gateway.admission.limits import LimitExceeded, Quota, RateLimitState, format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (6.885, "6.885s"),
        (59.9986, "59.999s"),
        (59.9994, "1m0s"),
        (60, "1m0s"),
        (72.5, "1m12.5s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
        (-3, "0s"),
    ],
)
def test_durations_are_written_like_openai_resets(seconds: float, text: str) -> None:
    """Rounded up to the millisecond: a reset never comes earlier than said."""
    assert format_duration(seconds) == text


def test_state_gives_the_six_openai_headers() -> None:
    state = RateLimitState(requests=Quota(60, 59, 1.0), tokens=Quota(150_000, 149_984, 0.0064))

    assert state.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "7ms",
    }
    assert RateLimitState(tokens=Quota(10, 0, 6.0)).headers() == {
        "x-ratelimit-limit-tokens": "10",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6s",
    }


def test_a_refusal_is_openais_429() -> None:
    error = LimitExceeded("tokens", "key", 1000, 600, 12.0004, RateLimitState(tokens=Quota(1000, 400, 36.0)))

    assert error.status_code == 429
    assert error.to_dict() == {
        "error": {
            "message": "Rate limit reached for tokens per minute of this API key: limit 1000, requested 600."
            " Please try again in 12.001s.",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert error.headers == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "36s",
        "retry-after": "13",
        "retry-after-ms": "12001",
    }


def test_a_spent_budget_is_openais_insufficient_quota_and_not_to_be_retried() -> None:
    error = LimitExceeded("monthly_cost", "tenant", 25 * 10**12, 10**9, 3600.0, RateLimitState())

    assert (error.status_code, error.error_type, error.code) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert error.message == (
        "Not enough monthly cost (picodollars) left in this tenant's budget: limit 25000000000000,"
        " requested 1000000000. The budget renews at 00:00 UTC on the 1st, in 1h0m0s."
    )
    assert error.headers == {"x-should-retry": "false", "retry-after": "3600", "retry-after-ms": "3600000"}


def test_a_request_larger_than_a_limit_says_so_and_is_not_to_be_retried() -> None:
    error = LimitExceeded("tokens", "tenant", 1000, 5000, None, RateLimitState())

    assert (error.error_type, error.code) == ("rate_limit_error", "rate_limit_exceeded")
    assert error.message.endswith("retrying cannot help: reduce max_tokens or the prompt.")
    assert error.headers == {"x-should-retry": "false"}
