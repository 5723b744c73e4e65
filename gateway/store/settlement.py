"""What the store hands a settlement plan and takes back, and what the reconcile report reads.

Settling a period is one transaction: the store locks the period (the oldest unsettled one of its
engine), reads the ledger's side (``PeriodToSettle``), asks the plan (``gateway/reconcile``) for
the adjustments, then inserts them and marks the period settled before it commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.records import Outcome, UsageRecord
from gateway.store.counters import ClosedPeriod

# Outcomes of requests cut before the gateway saw all the engine did for them.
CUT_OUTCOMES = (Outcome.aborted, Outcome.interrupted, Outcome.error)


@dataclass(frozen=True, slots=True)
class LedgerTokens:
    """Ledger sums in the engine's units: prompt tokens times choices (vLLM counts the prompt
    once per choice), cached prompt tokens, completion tokens."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class PeriodToSettle:
    """A closed period with the ledger rows that ended in it, on its engine."""

    period: ClosedPeriod
    ledger: LedgerTokens  # every row but adjustments
    cut_rows: list[UsageRecord]  # aborted, interrupted or error rows, by ``ended_at``
    carry_prompt_tokens: int = 0  # the negative residual left by the engine's previous period
    carry_generation_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Settlement:
    """The plan's answer: the adjustment rows, and what is carried to the next period (≤ 0)."""

    adjustments: list[UsageRecord] = field(default_factory=list)
    carry_prompt_tokens: int = 0
    carry_generation_tokens: int = 0

    @property
    def adjusted_prompt_tokens(self) -> int:
        """In the engine's units (times choices), like ``LedgerTokens``."""
        return sum(row.prompt_tokens * row.choices for row in self.adjustments)

    @property
    def adjusted_generation_tokens(self) -> int:
        return sum(row.completion_tokens for row in self.adjustments)


SettlementPlan = Callable[[PeriodToSettle], Settlement]


@dataclass(frozen=True, slots=True)
class SettledPeriod:
    """A period settled by this call (``settle_next_period``)."""

    period: ClosedPeriod
    ledger: LedgerTokens
    settlement: Settlement


@dataclass(frozen=True, slots=True)
class ReconcileHour:
    """One engine's hour: its counters' growth, the ledger rows and adjustments that ended in it."""

    engine: str
    hour: float
    engine_prompt_tokens: int = 0
    engine_cached_tokens: int = 0
    engine_generation_tokens: int = 0
    resets: int = 0
    ledger: LedgerTokens = LedgerTokens()
    adjusted: LedgerTokens = LedgerTokens()
