"""How a settled period's residual becomes adjustment rows: integer arithmetic, exact.

For one engine and one period between quiet points, the residual of each kind is what the engine
counted minus what the ledger holds (prompt tokens times choices: vLLM counts a prompt once per
choice). Then:

- a period with an engine restart is allocated like any other, but carries no negative residual
  on: what the old process counted after its last reading died with it, so the engine's count is
  then at most the truth and allocating a positive residual can never bill more than was made,
  while a negative one may be those lost counts, not a ledger surplus to net later (a planned
  restart, drained and read while idle, loses nothing: the audit in benchmarks/RESULTS.md);
- a negative residual is never credited: it is carried to the engine's next period and netted
  against a later positive one, so over time Σ ledger + Σ adjustments == Σ engine;
- a positive residual goes to the period's cut rows (aborted, interrupted, error), the only rows
  the gateway may have under-counted: prompt tokens to those that received no usage at all
  (``prompt_tokens == 0``; else to every cut row), completion tokens to every cut row, in equal
  shares with the remainder to the latest rows. Prompt shares are in the engine's units and become
  billed tokens divided by the row's choices; what no row can take in whole tokens (under n
  tokens for n > 1 rows), and a residual with no cut row to take it, is left unexplained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.records import Outcome, UsageRecord
from gateway.store.settlement import PeriodToSettle, Settlement

ADJUSTMENT_PREFIX = "adj_"


def equal_shares(total: int, count: int) -> list[int]:
    """``total`` in ``count`` integer shares differing by at most one, the larger ones last."""
    base, extra = divmod(total, count)
    return [base + (1 if i >= count - extra else 0) for i in range(count)]


def prompt_shares(total: int, choices: Sequence[int]) -> list[int]:
    """Billed prompt tokens per row: equal shares of ``total`` engine tokens, each divided by its
    row's choices; what the division leaves goes, in whole multiples, to the latest rows."""
    shares = equal_shares(total, len(choices))
    billed = [share // n for share, n in zip(shares, choices, strict=True)]
    left = total - sum(b * n for b, n in zip(billed, choices, strict=True))
    for i in reversed(range(len(choices))):
        extra = left // choices[i]
        billed[i] += extra
        left -= extra * choices[i]
    return billed


@dataclass(frozen=True, slots=True)
class Allocation:
    """Billed tokens per cut row's request id, and the negative residual carried on."""

    prompt_tokens: dict[str, int] = field(default_factory=dict)
    completion_tokens: dict[str, int] = field(default_factory=dict)
    carry_prompt_tokens: int = 0
    carry_generation_tokens: int = 0


def allocate(todo: PeriodToSettle) -> Allocation:
    """The module docstring's rules, for one period."""
    period, ledger = todo.period, todo.ledger
    prompt = period.prompt_tokens - ledger.prompt_tokens + todo.carry_prompt_tokens
    generation = period.generation_tokens - ledger.completion_tokens + todo.carry_generation_tokens
    cut = sorted(todo.cut_rows, key=lambda r: (r.ended_at, r.request_id))
    prompt_to: dict[str, int] = {}
    completion_to: dict[str, int] = {}
    if prompt > 0 and cut:
        targets = [r for r in cut if r.prompt_tokens == 0] or cut
        billed = prompt_shares(prompt, [max(r.choices, 1) for r in targets])
        prompt_to = {r.request_id: b for r, b in zip(targets, billed, strict=True) if b}
    if generation > 0 and cut:
        shares = equal_shares(generation, len(cut))
        completion_to = {r.request_id: s for r, s in zip(cut, shares, strict=True) if s}
    if period.resets:
        return Allocation(prompt_to, completion_to)
    return Allocation(prompt_to, completion_to, min(prompt, 0), min(generation, 0))


def adjustment_row(original: UsageRecord, prompt_tokens: int, completion_tokens: int) -> UsageRecord:
    """The one adjustment of ``original``: its id prefixed (so inserting it twice adds it once),
    its tenant, key, model, engine and times (the same report period and price version)."""
    return UsageRecord(
        request_id=ADJUSTMENT_PREFIX + original.request_id,
        tenant_id=original.tenant_id,
        key_id=original.key_id,
        model=original.model,
        api=original.api,
        started_at=original.started_at,
        endpoint=original.endpoint,
        outcome=Outcome.adjustment,
        http_status=original.http_status,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        ended_at=original.ended_at,
        choices=original.choices,
        service_tier=original.service_tier,
        adjusts=original.request_id,
    )


def plan_settlement(todo: PeriodToSettle, price: Callable[[UsageRecord], None]) -> Settlement:
    """The adjustment rows of one period, each priced by ``price`` (``Meter.price``)."""
    allocation = allocate(todo)
    adjustments = []
    for row in sorted(todo.cut_rows, key=lambda r: (r.ended_at, r.request_id)):
        prompt = allocation.prompt_tokens.get(row.request_id, 0)
        completion = allocation.completion_tokens.get(row.request_id, 0)
        if prompt or completion:
            adjustment = adjustment_row(row, prompt, completion)
            price(adjustment)
            adjustments.append(adjustment)
    return Settlement(adjustments, allocation.carry_prompt_tokens, allocation.carry_generation_tokens)
