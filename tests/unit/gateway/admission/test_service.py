"""What admission reserves for a typed request: the counted prompt plus the output cap, priced."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from gateway.admission.limits import InProcessLimiter, LimitExceeded
from gateway.admission.service import Admission
from gateway.admission.tokens import HeuristicCounter
from gateway.inference import InferenceRequest
from gateway.limit_spec import LimitSpec
from gateway.metering.pricing import Price, PriceBook
from gateway.metrics import GatewayMetrics
from gateway.records import Api, UsageRecord
from tests.support.clock import FakeClock
from tests.support.inference import KEY, typed_request

MESSAGES = [{"role": "user", "content": "a" * 29}]  # 3 + 4 + "user" (2) + 10 by the heuristic
PROMPT_TOKENS = 3 + 4 + 2 + 10
DEFAULT_MAX_TOKENS = 256


PRICE = Price("m", 0.0, prompt_per_million=Decimal("1"), completion_per_million=Decimal("2"))


def admission(defaults: LimitSpec | None, limiter: InProcessLimiter | None = None) -> Admission:
    return Admission(
        limiter or InProcessLimiter(),
        {"m": HeuristicCounter()},
        PriceBook([PRICE]),
        defaults,
        GatewayMetrics(CollectorRegistry()),
        DEFAULT_MAX_TOKENS,
    )


async def reserved(request: InferenceRequest) -> tuple[int, int]:
    reservation = await admission(LimitSpec(tpm=10**6)).admit(request, started_at=1.0)
    assert reservation is not None
    return reservation.tokens, reservation.cost_pico


async def test_a_chat_reserves_its_prompt_and_its_completion_cap() -> None:
    capped = typed_request(Api.chat, {"messages": MESSAGES, "max_completion_tokens": 7, "max_tokens": 100})
    # $1 and $2 per million tokens: 10^6 and 2 * 10^6 picodollars a token.
    assert await reserved(capped) == (PROMPT_TOKENS + 7, PROMPT_TOKENS * 10**6 + 7 * 2 * 10**6)
    uncapped = typed_request(Api.chat, {"messages": MESSAGES})
    assert (await reserved(uncapped))[0] == PROMPT_TOKENS + DEFAULT_MAX_TOKENS


async def test_n_choices_reserve_the_completion_cap_n_times_and_the_prompt_once() -> None:
    three = typed_request(Api.chat, {"messages": MESSAGES, "max_tokens": 7, "n": 3})
    assert await reserved(three) == (PROMPT_TOKENS + 21, PROMPT_TOKENS * 10**6 + 21 * 2 * 10**6)
    one, two = ({"prompt": "x"}, {"prompt": "x", "n": 2})
    single, double = [(await reserved(typed_request(Api.completions, body)))[0] for body in (one, two)]
    assert double - single == DEFAULT_MAX_TOKENS


async def test_an_embedding_reserves_only_its_input() -> None:
    request = typed_request(Api.embeddings, {"input": ["a" * 29, "b"], "max_tokens": 50})
    assert (await reserved(request))[0] == 10 + 1 + 2 * 2


async def test_the_requests_own_key_is_limited() -> None:
    key = dataclasses.replace(KEY, tenant_limits=LimitSpec(rpm=1))
    gate = admission(None)
    request = typed_request(Api.completions, {"prompt": "x"}, key=key)
    first = await gate.admit(request, started_at=1.0)
    assert first is not None and first.tokens == 0  # only a request rate: nothing is counted
    assert first.subject.tenant_id == KEY.tenant_id and first.subject.key_id == KEY.id
    assert await gate.admit(typed_request(Api.completions, {"prompt": "x"}), started_at=1.0) is None


async def test_tpm_and_budgets_count_cached_prompt_tokens_but_the_cost_is_discounted() -> None:
    """A cache hit still fills the context: every prompt token counts against the token limits,
    while the monthly cost is the row's cost (cached tokens at the cached price)."""
    clock = FakeClock()  # no refill between the requests
    limiter = InProcessLimiter(clock=clock)
    limits = LimitSpec(tpm=1000, monthly_tokens=10_000, monthly_cost_pico=10**12)
    gate = admission(limits, limiter)
    reservation = await gate.admit(typed_request(Api.chat, {"messages": MESSAGES, "max_tokens": 10}), clock())
    assert reservation is not None
    record = UsageRecord("req_1", KEY.tenant_id, KEY.id, "m", "chat.completions", clock())
    record.prompt_tokens, record.cached_tokens, record.completion_tokens = 300, 256, 10
    record.cost_pico = PRICE.cost_pico(300, 10, cached_tokens=256)
    assert record.cost_pico == 44 * 10**6 + 256 * 10**5 + 10 * 2 * 10**6  # cached at a tenth
    gate.settle(reservation, record)
    await gate.wait_settled()
    left = await limiter.remaining_budget(KEY.tenant_id, limits)
    assert (left.tokens, left.cost_pico) == (10_000 - 310, 10**12 - record.cost_pico)

    # 1000 - 310 tokens are left this minute (not 1000 - 54): 691 are refused, 690 fit.
    def asking(tokens: int) -> InferenceRequest:
        return typed_request(Api.chat, {"messages": MESSAGES, "max_tokens": tokens - PROMPT_TOKENS})

    with pytest.raises(LimitExceeded) as refused:
        await gate.admit(asking(691), clock())
    assert refused.value.reason == "tokens"
    assert await gate.admit(asking(690), clock()) is not None


async def test_a_refused_request_takes_only_a_request_per_minute() -> None:
    """Junk the edge refuses (bad JSON, a model the key may not use) still meets rpm, and nothing
    else: no tokens, no concurrency slot, nothing to settle."""
    limited = admission(LimitSpec(rpm=2, tpm=100, max_concurrent=1))
    await limited.charge_refused(KEY)
    request = typed_request(Api.chat, {"messages": MESSAGES, "max_tokens": 1})
    reservation = await limited.admit(request, started_at=1.0)  # the slot and the tokens are all there
    assert reservation is not None and reservation.state.requests is not None
    assert reservation.state.requests.remaining == 0
    with pytest.raises(LimitExceeded) as refused:
        await limited.charge_refused(KEY)
    assert refused.value.reason == "requests"
    await admission(None).charge_refused(KEY)  # unlimited: nothing to charge
