"""Each routing policy's choice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from gateway.config.pools import PoolSpec
from gateway.inference import InferenceRequest
from gateway.records import Api
from gateway.routing.endpoint import Endpoint
from gateway.routing.policies import PREFIX_CHARS, LeastLoad, PrefixAffinity, RoundRobin, affinity_key
from gateway.routing.pool import EnginePool
from tests.support.inference import typed_request

SYSTEM = "You are a careful assistant. " * 30  # a long, shared system prompt


def engines(*inflight: int) -> list[Endpoint]:
    return [Endpoint("m", f"http://e{i}", inflight=n) for i, n in enumerate(inflight)]


def test_round_robin_takes_turns_whatever_the_load() -> None:
    pool = engines(9, 0, 0)
    policy = RoundRobin()
    assert Counter(policy.choose(pool).url for _ in range(30)) == {e.url: 10 for e in pool}


def test_least_load_picks_the_idlest() -> None:
    pool = engines(3, 1, 2)
    assert {LeastLoad().choose(pool).url for _ in range(5)} == {"http://e1"}


def test_prefix_aware_sticks_to_one_engine_per_key_and_spreads_keys() -> None:
    pool = engines(0, 0, 0, 0)
    policy = PrefixAffinity()
    chosen = {policy.choose(pool, f"prefix:conversation {n}").url for n in range(200)}
    assert chosen == {e.url for e in pool}  # different keys spread over every engine
    first = policy.choose(pool, "prefix:same")
    assert all(policy.choose(pool, "prefix:same") is first for _ in range(20))


def test_prefix_aware_passes_over_an_overloaded_engine() -> None:
    pool = engines(0, 0, 0)
    policy = PrefixAffinity(load_factor=1.25)
    home = policy.choose(pool, "prefix:hot")
    home.inflight = 10  # far above 1.25 x the mean
    other = policy.choose(pool, "prefix:hot")
    assert other is not home
    home.inflight = 0
    assert policy.choose(pool, "prefix:hot") is home  # back home once it has room


def chat(*messages: Mapping[str, object], **extra: object) -> InferenceRequest:
    return typed_request(Api.chat, {"messages": list(messages), **extra})


def test_affinity_keys_follow_sessions_conversations_and_shared_system_prompts() -> None:
    opening = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I'm Ann"})
    turn1 = chat(*opening)
    turn2 = chat(*opening, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "My name?"})
    other = chat({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bonjour"})
    assert affinity_key(turn1) == affinity_key(turn2) == "prefix:Be brief.\x00Hi, I'm Ann"
    assert affinity_key(other) != affinity_key(turn1)
    shared_a = chat({"role": "system", "content": SYSTEM}, {"role": "user", "content": "a"})
    shared_b = chat({"role": "system", "content": SYSTEM}, {"role": "user", "content": "b"})
    assert affinity_key(shared_a) == affinity_key(shared_b) == "prefix:" + SYSTEM  # one long system prompt
    no_system = chat(
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "user", "content": "x"}
    )
    assert affinity_key(no_system) == "prefix:Hi"  # the first turn alone
    assert affinity_key(chat({"role": "user", "content": None})) is None
    assert affinity_key(chat({"role": "user", "content": [{"type": "text", "text": 5}]})) is None  # no text


def test_sessions_then_users_come_before_prompts() -> None:
    conversation = {"messages": [{"role": "user", "content": "Hello"}], "user": "u-42"}
    assert affinity_key(typed_request(Api.chat, conversation)) == "user:u-42"
    assert affinity_key(typed_request(Api.chat, conversation, session_id="s-1")) == "session:s-1"
    assert affinity_key(typed_request(Api.embeddings, {"input": "embed me", "user": "u-7"})) == "user:u-7"


def test_completions_stick_by_their_one_text_prompt() -> None:
    assert (
        affinity_key(typed_request(Api.completions, {"prompt": "Once upon a time"}))
        == "prefix:Once upon a time"
    )
    long_prompt = "x" * (PREFIX_CHARS + 10)
    assert (
        affinity_key(typed_request(Api.completions, {"prompt": long_prompt}))
        == "prefix:" + "x" * PREFIX_CHARS
    )
    assert affinity_key(typed_request(Api.completions, {"prompt": ["a", "b"]})) is None  # a batch
    assert affinity_key(typed_request(Api.completions, {"prompt": [1, 2, 3]})) is None
    assert affinity_key(typed_request(Api.embeddings, {"input": "embed me"})) is None


def test_the_pool_uses_the_policy_its_spec_names() -> None:
    for name, kind in (
        ("round_robin", RoundRobin),
        ("prefix_aware", PrefixAffinity),
        ("least_load", LeastLoad),
    ):
        pool = EnginePool.from_spec(
            PoolSpec(served_name="m", endpoints=["http://a", "http://b"], routing=name)
        )  # type: ignore[arg-type]
        assert isinstance(pool.policy, kind)
