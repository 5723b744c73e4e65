"""The simulated engine: admission, pacing, token accounting and metrics for each request.

A request is admitted by the scheduler, waits ``ttft_ms`` (its "prefill"), then produces one token
every ``itl_ms``. The number of tokens is ``min(limit, output_tokens)`` where ``limit`` is the
client's max_tokens clamped to the room the context leaves (``max_model_len - prompt_tokens``), as
vLLM clamps it; the finish reason is ``length`` when the limit was reached and ``stop`` otherwise.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.sim.asgi import ClientWatch, EventStream
from engines.sim.config import SimConfig, apply_patch
from engines.sim.embeddings import embed
from engines.sim.errors import BadRequest, InjectedFailure, SimulatedCrash
from engines.sim.metrics import ModelStats, SimMetrics
from engines.sim.prefix_cache import PrefixCache
from engines.sim.protocol import EmbeddingRequest, GenerationRequest
from engines.sim.scheduler import Scheduler
from engines.sim.tokens import VOCABULARY, generated_text
from engines.sim.wire import (
    ChatStream,
    CompletionStream,
    ResponsesStream,
    StreamFormat,
    chat_response,
    completion_response,
    embedding_response,
    responses_response,
    usage,
)

_BODIES = {"chat": chat_response, "completion": completion_response, "responses": responses_response}
_STREAMS: dict[str, Callable[[str], StreamFormat]] = {
    "chat": ChatStream,
    "completion": CompletionStream,
    "responses": ResponsesStream,
}


@dataclass(frozen=True, slots=True)
class Plan:
    """What a generation request will produce, and its pacing (a snapshot of the config)."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    ttft: float
    itl: float
    fail_after_tokens: int | None
    cached_tokens_reported: bool  # usage carries prompt_tokens_details.cached_tokens


class SimEngine:
    """One simulated engine: its live config, counters, prefix cache and scheduler."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.metrics = SimMetrics(config.models, config.kv_cache_tokens)
        self.prefix_cache = PrefixCache(config.prefix_block_size, config.prefix_cache_blocks)
        self.scheduler = Scheduler(lambda: self.config.max_num_seqs)
        self.created = int(time.time())
        self._random = random.Random(config.seed)

    def reconfigure(self, patch: dict[str, Any]) -> SimConfig:
        """Apply a runtime patch (raises pydantic's ``ValidationError``); requests in flight keep theirs."""
        self.config = apply_patch(self.config, patch)
        self.scheduler.admit_waiting()
        return self.config

    def reset(self) -> None:
        """Zero the counters and forget the prefix cache."""
        self.metrics.reset()
        self.prefix_cache.clear()

    def check_failure(self) -> None:
        """Raise ``InjectedFailure`` with probability ``failure_rate``."""
        config = self.config
        if config.failure_rate > 0 and self._random.random() < config.failure_rate:
            raise InjectedFailure(config.failure_status)

    def plan(self, request: GenerationRequest) -> Plan:
        """Decide token counts; refuse what vLLM refuses (the same messages)."""
        config = self.config
        prompt = len(request.prompt_tokens)
        field = request.max_tokens_field
        if field is not None and request.max_tokens is not None and request.max_tokens > config.max_model_len:
            raise BadRequest(
                f"{field}={request.max_tokens} cannot be greater than max_model_len={config.max_model_len}. "
                "Please request fewer output tokens.",
                param=field,
            )
        if prompt > config.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. However, your "
                f"prompt contains {prompt} input tokens, which exceeds this limit even without any output "
                "tokens. Please reduce the length of the input prompt.",
                param="input_tokens",
                code="context_length_exceeded",
            )
        room = config.max_model_len - prompt
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        tokens = min(limit, config.output_tokens)
        return Plan(
            prompt_tokens=prompt,
            completion_tokens=tokens,
            finish_reason="length" if tokens == limit else "stop",
            ttft=config.ttft_ms / 1000,
            itl=config.itl_ms / 1000,
            fail_after_tokens=config.fail_after_tokens,
            cached_tokens_reported=config.enable_prompt_tokens_details,
        )

    async def complete(self, request: GenerationRequest, plan: Plan, watch: ClientWatch) -> bytes | None:
        """A non-streaming response body, or None if the client left before it was ready.

        The whole output is due ``ttft + (n - 1) * itl`` after admission, so one timer serves the
        request; on a disconnect only the tokens due before it was noticed are counted.
        """
        stats = self.metrics.stats(request.model)
        ttft, itl = plan.ttft, plan.itl
        await self.scheduler.admit(stats)
        stats.kv_tokens += plan.prompt_tokens
        produced = 0
        try:
            started = asyncio.get_running_loop().time()
            delay = ttft + itl * max(plan.completion_tokens - 1, 0)
            if delay > 0:
                await watch.pause(delay)
            if watch.gone:
                produced = tokens_due(watch.gone_at - started, ttft, itl, plan.completion_tokens)
                if watch.gone_at - started >= ttft:
                    self._prefill(request, stats)
                stats.generation_tokens += produced
                return None
            cached = self._prefill(request, stats)
            produced = plan.completion_tokens
            stats.generation_tokens += produced
            stats.success[plan.finish_reason] += 1
        finally:
            stats.kv_tokens -= plan.prompt_tokens
            self.scheduler.release(stats)
        text = generated_text(produced)
        return _BODIES[request.endpoint](
            request.model, text, plan.finish_reason, self._usage(plan, produced, cached)
        )

    async def stream(
        self, request: GenerationRequest, plan: Plan, watch: ClientWatch, events: EventStream
    ) -> None:
        """Write the SSE events of an opened stream; returns early (no [DONE]) if the client left."""
        stats = self.metrics.stats(request.model)
        fmt = _STREAMS[request.endpoint](request.model)
        await self.scheduler.admit(stats)
        stats.kv_tokens += plan.prompt_tokens
        try:
            await watch.pause(plan.ttft)
            if watch.gone:
                return
            cached = self._prefill(request, stats)
            opening = fmt.opening(usage(plan.prompt_tokens, 0) if request.continuous_usage else None)
            if opening is not None:
                await events.emit(opening)
            produced = await self._stream_tokens(request, plan, fmt, watch, events, stats)
            if produced < plan.completion_tokens:
                return
            stats.success[plan.finish_reason] += 1
            if request.include_usage:
                await events.emit(fmt.final_usage(self._usage(plan, produced, cached)))
            await events.emit(fmt.done, last=True)
        finally:
            stats.kv_tokens -= plan.prompt_tokens
            self.scheduler.release(stats)

    async def _stream_tokens(
        self,
        request: GenerationRequest,
        plan: Plan,
        fmt: StreamFormat,
        watch: ClientWatch,
        events: EventStream,
        stats: ModelStats,
    ) -> int:
        """Emit the token events; returns how many tokens were produced."""
        total, prompt = plan.completion_tokens, plan.prompt_tokens
        itl, cut = plan.itl, plan.fail_after_tokens
        size = len(VOCABULARY)
        if total == 0:  # nothing to say: one empty delta carries the finish reason
            await events.emit(
                fmt.token("", plan.finish_reason, usage(prompt, 0) if request.continuous_usage else None)
            )
            return 0
        produced = 0
        try:
            for index in range(total):
                if index:
                    await watch.pause(itl)
                if watch.gone:
                    break
                if cut is not None and index >= cut:
                    raise SimulatedCrash(f"stream cut after {index} tokens (fail_after_tokens)")
                produced += 1
                stats.generation_tokens += 1
                stats.kv_tokens += 1
                finish = plan.finish_reason if produced == total else None
                running = usage(prompt, produced) if request.continuous_usage else None
                await events.emit(fmt.token(VOCABULARY[index % size], finish, running))
            return produced
        finally:
            stats.kv_tokens -= produced

    def embeddings(self, request: EmbeddingRequest) -> bytes:
        """An embeddings body; counted as one finished request with prompt tokens only."""
        config = self.config
        stats = self.metrics.stats(request.model)
        prompt = sum(len(tokens) for tokens in request.inputs)
        vectors = [embed(tokens, config.embedding_dim) for tokens in request.inputs]
        stats.prompt_tokens += prompt
        stats.success["stop"] += 1
        return embedding_response(request.model, vectors, request.encoding_format, prompt)

    def _prefill(self, request: GenerationRequest, stats: ModelStats) -> int:
        """Count the prompt as processed and query the prefix cache with it; returns the prompt
        tokens the cache served (whole blocks of a prefix seen before, as vLLM counts them)."""
        prompt = len(request.prompt_tokens)
        hits = self.prefix_cache.query(request.prompt_tokens)
        stats.prompt_tokens += prompt
        stats.prefix_queries += prompt
        stats.prefix_hits += hits
        return hits

    @staticmethod
    def _usage(plan: Plan, produced: int, cached: int) -> dict[str, Any]:
        """The final usage; with ``enable_prompt_tokens_details`` it says how much was cached."""
        return usage(plan.prompt_tokens, produced, cached if plan.cached_tokens_reported else None)


def tokens_due(elapsed: float, ttft: float, itl: float, total: int) -> int:
    """How many of ``total`` tokens (first at ``ttft``, then every ``itl``) were due at ``elapsed``."""
    if elapsed < ttft or total == 0:
        return 0
    if itl <= 0:
        return total
    return min(total, 1 + int((elapsed - ttft) / itl))
