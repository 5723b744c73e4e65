"""Routing policies: which healthy engine of a pool gets a request. One class per policy.

Chosen per pool (``PoolSpec.routing``): ``least_load`` (default), ``round_robin`` or
``prefix_aware``. ``prefix_aware`` sends requests that share a prompt prefix (a conversation's
turns, a tenant's long system prompt) or a session (the OpenAI ``user`` field, the
``x-session-id`` header) to the same engine, so its prefix cache hits, while that engine is not
overloaded: rendezvous hashing with bounded load (an engine above ``load_factor`` × the pool's
mean load is passed over). It keeps no index, so its memory does not grow with traffic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.inference import ChatMessage, InferenceRequest

if TYPE_CHECKING:
    from gateway.routing.endpoint import Endpoint

# A system prompt at least this long is shared context worth caching on its own.
LONG_SYSTEM_PROMPT_CHARS = 512
PREFIX_CHARS = 2048


class RoutingPolicy(Protocol):
    """Chooses one endpoint among healthy, unsaturated candidates."""

    # Whether ``choose`` uses the request's affinity key (else the proxy does not compute one).
    wants_key: bool

    def choose(self, candidates: list[Endpoint], key: str | None = None) -> Endpoint: ...


class LeastLoad:
    """Least loaded (``Endpoint.load``: in flight here, or the engine's own count, and its KV
    cache); ties rotate so equal engines share load evenly."""

    wants_key = False

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: list[Endpoint], key: str | None = None) -> Endpoint:
        self._turn += 1
        count = len(candidates)
        best = candidates[self._turn % count]
        for i in range(1, count):
            endpoint = candidates[(self._turn + i) % count]
            if endpoint.load() < best.load():
                best = endpoint
        return best


class RoundRobin:
    """Each engine in turn, whatever its load."""

    wants_key = False

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: list[Endpoint], key: str | None = None) -> Endpoint:
        self._turn += 1
        return candidates[self._turn % len(candidates)]


class PrefixAffinity:
    """Rendezvous hashing of the affinity key with bounded load; least-load without a key."""

    wants_key = True

    def __init__(self, load_factor: float = 1.25) -> None:
        self._load_factor = load_factor
        self._fallback = LeastLoad()

    def choose(self, candidates: list[Endpoint], key: str | None = None) -> Endpoint:
        if key is None or len(candidates) == 1:
            return self._fallback.choose(candidates)
        load = sum(e.load() for e in candidates) + 1  # counting this request
        bound = max(1.0, self._load_factor * load / len(candidates))
        ranked = sorted(candidates, key=lambda e: _score(key, e.url), reverse=True)
        for endpoint in ranked:
            if endpoint.load() < bound:
                return endpoint
        return self._fallback.choose(candidates)


POLICIES: dict[str, type[LeastLoad] | type[RoundRobin] | type[PrefixAffinity]] = {
    "least_load": LeastLoad,
    "round_robin": RoundRobin,
    "prefix_aware": PrefixAffinity,
}


def create_policy(name: str) -> RoutingPolicy:
    return POLICIES[name]()


def affinity_key(request: InferenceRequest) -> str | None:
    """What should stick to one engine: the session if named, else the prompt's opening."""
    if request.session_id:
        return "session:" + request.session_id
    if request.user:
        return "user:" + request.user
    prefix = _chat_prefix(request.chat.opening(2)) if request.chat is not None else None
    if prefix is None and request.prompt is not None:
        prefix = (request.prompt.single_text or "")[:PREFIX_CHARS]
    return "prefix:" + prefix if prefix else None


def _chat_prefix(messages: Sequence[ChatMessage]) -> str | None:
    """A long system prompt alone (shared by many conversations), else the system prompt and the
    first user turn: the same for every later turn of one conversation."""
    if not messages:
        return None
    first = messages[0]
    if first.role != "system":
        return first.text[:PREFIX_CHARS] or None
    if len(first.text) >= LONG_SYSTEM_PROMPT_CHARS:
        return first.text[:PREFIX_CHARS]
    return "\x00".join(m.text for m in messages[:2])[:PREFIX_CHARS] or None


def _score(key: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{url}".encode(), digest_size=8).digest(), "big")
