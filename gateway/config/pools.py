"""The pool spec: which models are served, by how many engines, where.

One YAML file (``configs/*.yaml``) describes the engine pools. The launcher reads it to start
vLLM processes; the gateway reads the same file to know each model's endpoints. Models use
``extra="forbid"`` and load through ``gateway.config.loader``, so a typo fails at start-up with
the file, the key path and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.config.loader import load_model

TINY_MODEL_SOURCE = "builtin:tiny-llama"
# vLLM's (and the simulator's) environment variable for the API key it requires on /v1.
ENGINE_KEY_VARIABLE = "VLLM_API_KEY"


class ReplicaSpec(BaseModel):
    """Per-replica placement: the GPUs, or for a CPU engine the cores, one engine process may use."""

    model_config = ConfigDict(extra="forbid")

    gpu_ids: list[int] = Field(default_factory=list)
    # vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` syntax, e.g. ``0-7`` (``0-3|4-7`` for two tensor-parallel
    # ranks). Unset: the launcher splits the cores between its CPU engines (engines/placement.py).
    cpus: str | None = Field(default=None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*(\|\d+(-\d+)?(,\d+(-\d+)?)*)*$")


class QueueSpec(BaseModel):
    """Bounds of a pool's fair queue: requests waiting for a saturated engine (with
    ``max_inflight_per_engine``), or for an engine to come back (``GATEWAY_NO_ENGINE_WAIT_S``)."""

    model_config = ConfigDict(extra="forbid")

    # Waiting requests of one tenant; one more is refused with 429 rate_limit_exceeded.
    max_per_tenant: int = Field(default=64, ge=1)
    # Waiting requests of all tenants; one more is refused with 503 service_unavailable.
    max_total: int = Field(default=512, ge=1)
    # A request still waiting after this long is refused with 503 service_unavailable.
    max_wait_s: float = Field(default=30.0, gt=0)
    # While several tenants are active (sent a request within ``active_window_s``), none may hold
    # more than an equal share of the shared slots: a newcomer then finds a slot free at once
    # instead of waiting for a bursting tenant's request to end. Not work-conserving: share that
    # a light tenant leaves unused stays idle until it has been quiet for the window.
    fair_share: bool = True
    active_window_s: float = Field(default=2.0, gt=0)


class KubernetesDiscoverySpec(BaseModel):
    """The ready addresses of a (headless) Service, read from its EndpointSlices."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1)
    # None: the gateway pod's own namespace (from its service account).
    namespace: str | None = None
    # The engines' port: a number, or the name of a port in the Service.
    port: int | str = 8000


class DiscoverySpec(BaseModel):
    """Where a pool's engines are found at run time; exactly one source."""

    model_config = ConfigDict(extra="forbid")

    kubernetes: KubernetesDiscoverySpec | None = None
    # ``host:port`` whose A/AAAA records are the engines, e.g. a headless Service's name
    # ``llama-8b.llm.svc.cluster.local:8000``.
    dns: str | None = Field(default=None, pattern=r"^[^:/\s]+:\d{1,5}$")

    @model_validator(mode="after")
    def _one_source(self) -> DiscoverySpec:
        if (self.kubernetes is None) == (self.dns is None):
            raise ValueError("discovery needs exactly one of kubernetes or dns")
        return self


class PoolSpec(BaseModel):
    """One model served by ``replicas`` engines (launched), by fixed ``endpoints`` (external) or
    by engines found at run time (``discovery``)."""

    model_config = ConfigDict(extra="forbid")

    served_name: str = Field(min_length=1)
    # A local path, a hub id (production), or ``builtin:tiny-llama`` (built on first use).
    model: str = TINY_MODEL_SOURCE
    device: Literal["cpu", "gpu"] = "cpu"
    replicas: int = Field(default=1, ge=1)
    base_port: int = Field(default=8100, ge=1, le=65535)
    host: str = "127.0.0.1"
    # Per-replica GPU ids; when given its length must equal ``replicas``.
    placement: list[ReplicaSpec] = Field(default_factory=list)
    vllm_args: list[str] = Field(default_factory=list)
    # vLLM's tool-call parser for this model (``llama3_json`` for Llama 3.x, ``hermes`` for Qwen,
    # ``mistral``, ...): the engines start with ``--enable-auto-tool-choice --tool-call-parser``,
    # so ``tools`` with ``tool_choice: "auto"`` work. Unset: only named or no tool choice.
    tool_call_parser: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    # ``--host`` in ``vllm_args`` binds a launched engine beyond loopback, where anything that
    # reaches it bypasses the gateway: refused unless this says it is meant (and then logged).
    allow_host_override: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    # External engines (already running): when set, nothing is launched for this pool.
    endpoints: list[str] = Field(default_factory=list)
    kind: Literal["generate", "embed"] = "generate"
    # How a request picks one of the pool's engines (gateway/routing/policies.py).
    routing: Literal["least_load", "round_robin", "prefix_aware"] = "least_load"
    # ``sim`` launches ``python -m engines.sim`` instead of vLLM (tests, benchmarks).
    engine: Literal["vllm", "sim"] = "vllm"
    # How the gateway counts prompt tokens (gateway.admission.tokens): ``hf:<dir or tokenizer.json>``,
    # ``tiktoken:<ranks file>`` (cl100k's split pattern) or ``heuristic``. Unset: the model's own
    # tokenizer.json when the model is a local directory, else the heuristic.
    tokenizer: str | None = Field(default=None, pattern=r"^(hf:.+|tiktoken:.+|heuristic)$")
    # Dedicated capacity: tenant name → indices of its engines (replica index for a launched pool,
    # position in ``endpoints`` for an external one). No other tenant ever reaches them.
    dedicated: dict[str, list[int]] = Field(default_factory=dict)
    # A tenant whose dedicated engines are all saturated or down may use the shared ones.
    dedicated_spill_over: bool = True
    # Requests one engine is given at a time; past it the engine is saturated and on-demand
    # requests wait in the pool's fair queue. None: never saturated, no queue.
    max_inflight_per_engine: int | None = Field(default=None, ge=1)
    queue: QueueSpec = Field(default_factory=QueueSpec)
    # Engines found at run time (gateway.routing.discovery): nothing is launched, ``endpoints`` is unused.
    discovery: DiscoverySpec | None = None

    @model_validator(mode="after")
    def _placement_matches_replicas(self) -> PoolSpec:
        if self.placement and len(self.placement) != self.replicas:
            raise ValueError(f"placement has {len(self.placement)} entries but replicas is {self.replicas}")
        if self.discovery is not None and (self.endpoints or self.dedicated):
            # Discovered engines come and go, so indices into them would name no fixed engine.
            raise ValueError("a pool with discovery takes neither endpoints nor dedicated")
        if self.host not in ("127.0.0.1", "localhost", "::1") and self.launched:
            raise ValueError("launched engines bind loopback only; use endpoints for remote engines")
        self._check_engine_door()
        self._check_dedicated()
        return self

    def _check_engine_door(self) -> None:
        """An engine's address and key are the launcher's: a pool may not quietly change them."""
        flags = {arg.partition("=")[0] for arg in self.vllm_args}
        if "--host" in flags and not self.allow_host_override:
            raise ValueError(
                "vllm_args sets --host: launched engines bind loopback so that only the gateway "
                "reaches them; set allow_host_override: true if another address is meant"
            )
        if "--api-key" in flags or ENGINE_KEY_VARIABLE in self.env:
            raise ValueError(
                f"the engines' API key is the gateway's (GATEWAY_ENGINE_API_KEY, given to each engine "
                f"as {ENGINE_KEY_VARIABLE}); vllm_args and env may not set their own"
            )

    @property
    def overrides_host(self) -> bool:
        return any(arg.partition("=")[0] == "--host" for arg in self.vllm_args)

    def _check_dedicated(self) -> None:
        count = len(self.endpoints) if self.endpoints else self.replicas
        owner: dict[int, str] = {}
        for tenant, indices in self.dedicated.items():
            for index in indices:
                if not 0 <= index < count:
                    raise ValueError(f"dedicated[{tenant}]: no engine {index} (the pool has {count})")
                if index in owner:
                    raise ValueError(f"engine {index} is dedicated to both {owner[index]} and {tenant}")
                owner[index] = tenant

    def dedicated_owner(self, index: int) -> str | None:
        """The tenant engine ``index`` is reserved for, or None when it is shared."""
        return next((t for t, indices in self.dedicated.items() if index in indices), None)

    @property
    def launched(self) -> bool:
        return not self.endpoints and self.discovery is None

    def tool_call_flags(self) -> list[str]:
        """vLLM's flags for ``tool_call_parser`` (none when unset or already in ``vllm_args``)."""
        if self.tool_call_parser is None or "--tool-call-parser" in self.vllm_args:
            return []
        return ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]

    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.replicas)]

    def endpoint_urls(self) -> list[str]:
        """Base URLs (no trailing slash, no ``/v1``) of this pool's engines (none yet if discovered)."""
        if self.discovery is not None:
            return []
        if self.endpoints:
            return [url.rstrip("/") for url in self.endpoints]
        return [f"http://{self.host}:{port}" for port in self.ports()]


class DeploymentSpec(BaseModel):
    """The whole file: a list of pools."""

    model_config = ConfigDict(extra="forbid")

    pools: list[PoolSpec]

    @model_validator(mode="after")
    def _unique(self) -> DeploymentSpec:
        names = [p.served_name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"served_name repeated: {', '.join(dupes)}")
        ports = [port for p in self.pools if p.launched for port in p.ports()]
        clashing = sorted({p for p in ports if ports.count(p) > 1})
        if clashing:
            raise ValueError(f"engine ports overlap: {clashing}")
        return self

    def pool(self, served_name: str) -> PoolSpec | None:
        return next((p for p in self.pools if p.served_name == served_name), None)


def load_spec(path: Path | str) -> DeploymentSpec:
    """Read and validate a pool spec; a ``ConfigError`` names the file, the key path and what was expected."""
    return load_model(Path(path), DeploymentSpec)
