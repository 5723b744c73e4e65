"""Wire models: OpenAI's requests and responses (with OpenAI's field names), then the gateway's
own HTTP API (``/admin``, ``/v1/usage``), shaped like OpenAI's (``object``, ``data``).

OpenAI requests are validated for the fields the gateway acts on and otherwise passed to the
engine as sent (``extra="allow"``), so a new sampling parameter needs no gateway release. The
gateway's own requests reject unknown fields (``extra="forbid"``): a typo is an error, not a no-op.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, WithJsonSchema
from pydantic.config import JsonDict

from gateway.limit_spec import LimitSpec

# A model name is echoed in errors and, once known to be served, stored in the ledger: bounded.
MAX_MODEL_CHARS = 256
# An output cap beyond any context length; it keeps cap × n (the reservation) far inside the
# 64-bit counters of Redis, which an overflow would turn into a limiter error (and fail-open).
MAX_OUTPUT_TOKENS = 2**31 - 1
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_CHARS)]


def _integral(value: object) -> object:
    """JSON has one number type: ``2.0`` is the integer 2, as JSON Schema's ``integer`` (this
    API's schema) and vLLM read it. ``2.5``, ``"2"`` and ``true`` stay refused (strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field: strict (no strings, no booleans), but 2.0 is 2.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]
OutputCap = Annotated[JsonInt, Field(ge=0, le=MAX_OUTPUT_TOKENS)]
# The roles OpenAI's chat API takes, in the order its errors list them; any other is refused at
# the edge (vLLM accepts any string, which a chat template may then render oddly).
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# A chat message as the schema describes it: a role and OpenAI's content (text, or parts). The model
# takes any object: the edge checks the role itself (with OpenAI's words, ``gateway.inference``)
# and the engine reads the rest as sent.
ChatMessageParam = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"enum": list(CHAT_ROLES)},
                "content": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "object"}},
                        {"type": "null"},
                    ]
                },
                "name": {"type": "string"},
            },
        }
    ),
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


class _GenerationRequest(BaseModel):
    """Fields the gateway acts on are strict, as OpenAI's are: ``"10"`` is not a number and
    ``"yes"`` is not a boolean (pydantic's lax mode would take both)."""

    model_config = ConfigDict(extra="allow")

    model: ModelName
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: OutputCap | None = None
    n: JsonInt | None = Field(default=None, ge=1, le=128)
    best_of: JsonInt | None = Field(default=None, ge=1, le=20)  # OpenAI's bound
    stop: str | list[str] | None = None
    service_tier: str | None = None
    user: str | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessageParam] = Field(min_length=1)
    max_completion_tokens: OutputCap | None = None


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: ModelName
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``. Nothing is stored: ``previous_response_id`` and ``background`` are
    refused at the edge (README, "Responses API"); ``store`` is accepted and has no effect."""

    model_config = ConfigDict(extra="allow")

    # As strict as chat's: a bounded model name, no "10" for a number, no "yes" for a boolean,
    # and an output cap the limiter's counters can hold (the admitted reservation).
    model: ModelName
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: StrictBool | None = False
    max_output_tokens: Annotated[JsonInt, Field(ge=1, le=MAX_OUTPUT_TOKENS)] | None = None
    tools: list[dict[str, Any]] | None = None
    store: StrictBool | None = None
    service_tier: str | None = None
    user: str | None = None


# vLLM's own request fields that reach past the request into the engine's operation: its
# scheduling priority, its request ids, KV-cache transfer between engines, Jinja templates and raw
# tensors it would execute or load, custom logits processors' arguments, media fetching. Refused
# with 400; vLLM's sampling and output extensions (README, "Engine extensions") pass through.
ENGINE_ONLY_FIELDS = frozenset(
    {
        "chat_template",
        "ec_transfer_params",
        "kv_transfer_params",
        "logits_processors",
        "media_io_kwargs",
        "mm_payload",
        "mm_processor_kwargs",
        "priority",
        "prompt_embeds",
        "request_id",
        "return_mm_kwargs",
        "routed_experts_prompt_start",
        "session_id",
        "vllm_xargs",
    }
)
# Responses API fields that need state the engines keep per process (or not at all).
STATEFUL_RESPONSES_FIELDS = ("previous_response_id", "background")


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error the gateway answers with, in OpenAI's shape."""

    error: ErrorInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gateway"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# The gateway's own API. Times are ISO-8601 UTC strings; money is a decimal string.


# A tenant's name: checked by ``TenancyService`` (its own 400), shown in the schema.
TENANT_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
# What a limit may be (``LimitSpec``'s range, checked there with its own 400), shown in the schema.
_LIMIT_RANGE: JsonDict = {"minimum": 0, "maximum": 2**63 - 1}


class TenantCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(json_schema_extra={"pattern": f"^{TENANT_NAME_PATTERN}$"})


class LimitsObject(BaseModel):
    """A tenant's or a key's limits; a field left out or ``null`` is unlimited at this level.

    The same shape is sent (``PUT .../limits``) and returned (in a tenant or key): ``LimitSpec``
    as written, converted here and nowhere else.
    """

    model_config = ConfigDict(extra="forbid")

    rpm: JsonInt | None = Field(default=None, json_schema_extra=_LIMIT_RANGE)  # requests per minute
    tpm: JsonInt | None = Field(
        default=None, json_schema_extra=_LIMIT_RANGE
    )  # prompt + completion tokens per minute
    max_concurrent: JsonInt | None = Field(default=None, json_schema_extra=_LIMIT_RANGE)
    monthly_tokens: JsonInt | None = Field(
        default=None, json_schema_extra=_LIMIT_RANGE
    )  # per UTC calendar month
    monthly_cost: str | None = None  # per UTC calendar month, in the price table's currency: "25.00"

    @classmethod
    def from_spec(cls, limits: LimitSpec) -> LimitsObject:
        return cls.model_validate(limits.written())

    def to_spec(self) -> LimitSpec:
        """Raises ``LimitValueError`` (400, ``param`` the field) for a value out of range or a
        cost that is not an exact amount."""
        return LimitSpec.from_written(self.model_dump())


class TenantObject(BaseModel):
    object: Literal["tenant"] = "tenant"
    id: str
    name: str
    status: str  # active, suspended or deleted
    created_at: str
    limits: LimitsObject | None  # None: the configured defaults apply


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TenantObject]


class EngineObject(BaseModel):
    """One engine endpoint as this gateway process routes to it (``/admin/engines``)."""

    object: Literal["engine"] = "engine"
    model: str
    url: str
    healthy: bool  # passes active /health checks
    draining: bool  # taken out of service on purpose
    ejected: bool  # cooling down after failed requests (passive ejection)
    inflight: int  # this process's requests on it
    engine_running: int  # the engine's own counts and KV-cache use, last scraped
    engine_waiting: int
    kv_cache_usage: float


class EngineList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EngineObject]


class EngineDrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str
    models: list[str] | None = None  # None: every model
    expires_at: str | None = None  # ISO date (00:00 UTC) or date-time; None: never


class KeyUpdateRequest(BaseModel):
    """Fields left out stay as they are; ``null`` means every model / never expires."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = None
    expires_at: str | None = None


class KeyRotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: the server's key_rotation_grace_s; at most a year (tenancy.service.MAX_GRACE_S).
    grace_s: float | None = Field(default=None, ge=0, le=366 * 24 * 3600.0, allow_inf_nan=False)


class KeyObject(BaseModel):
    """A key as listed: never its secret, never its hash."""

    object: Literal["api_key"] = "api_key"
    id: str
    tenant: str
    prefix: str
    models: list[str] | None
    expires_at: str | None
    revoked_at: str | None
    created_at: str
    limits: LimitsObject | None  # the key's own, on top of its tenant's; None: none of its own


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyObject]


class CreatedKey(KeyObject):
    """The answer to a create or a rotation: the only time the secret is ever shown."""

    secret: str


class KeyRotation(BaseModel):
    object: Literal["api_key.rotation"] = "api_key.rotation"
    key: CreatedKey  # the replacement
    previous: KeyObject  # the old key, now expiring at the end of the grace period


class UsageLine(BaseModel):
    group: str  # a UTC day (YYYY-MM-DD), a model or a key id; "total" in the totals line
    requests: int
    prompt_tokens: int
    cached_tokens: int  # of prompt_tokens, served from the engines' prefix caches (priced apart)
    completion_tokens: int
    total_tokens: int
    cost: str  # exact, fixed decimals


class UsageReportResponse(BaseModel):
    object: Literal["usage.report"] = "usage.report"
    tenant: str | None  # None: every tenant (admin only)
    from_: str = Field(alias="from")  # first UTC day, included
    to: str  # last UTC day, included
    group_by: str
    currency: str
    data: list[UsageLine]
    total: UsageLine
