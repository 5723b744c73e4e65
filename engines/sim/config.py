"""The simulated engine's configuration and its runtime patch.

``SimConfig`` is immutable: a runtime change (``POST /sim/config``) validates a ``SimConfigPatch``
and swaps in a new ``SimConfig``, so a request that already started keeps a consistent view.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "sim-model"


class SimConfig(BaseModel):
    """Everything that shapes one simulated engine's behaviour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Served model names; a request without ``model`` gets the first (as vLLM does).
    models: list[str] = Field(default_factory=lambda: [DEFAULT_MODEL], min_length=1)
    # Pacing: the wait before the first token and between tokens. 0 means no sleep.
    ttft_ms: float = Field(default=0.0, ge=0)
    itl_ms: float = Field(default=0.0, ge=0)
    # How many tokens the "model" wants to say; a smaller max_tokens cuts it short.
    output_tokens: int = Field(default=16, ge=0)
    # Failure injection: the chance a request fails with ``failure_status`` before any work.
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    failure_status: int = Field(default=500, ge=400, le=599)
    # When set, a stream is cut without [DONE] after this many tokens (an engine dying mid-stream).
    fail_after_tokens: int | None = Field(default=None, ge=0)
    embedding_dim: int = Field(default=384, ge=1, le=65536)
    max_model_len: int = Field(default=4096, ge=1)
    # Requests beyond this many running ones wait (``vllm:num_requests_waiting``).
    max_num_seqs: int = Field(default=256, ge=1)
    # Capacity behind ``vllm:kv_cache_usage_perc``: prompt + generated tokens of running requests.
    kv_cache_tokens: int = Field(default=262_144, ge=1)
    # vLLM's ``--block-size``: 16 on GPUs; vLLM's CPU backend uses 128.
    prefix_block_size: int = Field(default=16, ge=1)
    prefix_cache_blocks: int = Field(default=8192, ge=0)
    # vLLM's ``--enable-prompt-tokens-details``: usage then carries
    # ``prompt_tokens_details.cached_tokens`` (the prompt tokens served from the prefix cache).
    enable_prompt_tokens_details: bool = False
    seed: int | None = None


class SimConfigPatch(BaseModel):
    """The fields ``POST /sim/config`` may change; absent fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = None
    itl_ms: float | None = None
    output_tokens: int | None = None
    failure_rate: float | None = None
    failure_status: int | None = None
    fail_after_tokens: int | None = None
    max_num_seqs: int | None = None


def apply_patch(config: SimConfig, patch: dict[str, Any]) -> SimConfig:
    """Return ``config`` with ``patch`` applied; raises ``ValidationError`` on a bad field or value.

    Only ``fail_after_tokens`` may be set to null (to switch it off); the rest are re-validated
    against ``SimConfig``'s own bounds so a patch cannot produce a config that start-up would refuse.
    """
    changes = SimConfigPatch.model_validate(patch).model_dump(exclude_unset=True)
    return SimConfig.model_validate({**config.model_dump(), **changes})
