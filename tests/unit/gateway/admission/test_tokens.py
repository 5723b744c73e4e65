"""Prompt token counts: every request shape, each counter, and which counter a pool gets."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engines.tiny_model import build_tiny_model
from gateway.admission.tokens import (
    EXACT_LIMIT_CHARS,
    HeuristicCounter,
    HfTokenCounter,
    TiktokenCounter,
    TokenizerConfigError,
    build_counters,
    estimate_tokens,
)
from gateway.config.models import minilm_path
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.inference import InferenceRequest, content_text
from gateway.records import Api
from tests.support.inference import typed_request

CHATS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And how many days are in a week?"},
    ],
    # Special-token text, newlines, non-ASCII, an empty and a missing content, a name.
    [
        {
            "role": "user",
            "content": "Say <|user|> and </s> and <s>\n\n  literally: naïve 東京 🙂",
            "name": "bob",
        },
        {"role": "assistant", "content": ""},
        {"role": "user", "content": None},
    ],
    # Content parts: text parts joined with newlines, the image left out.
    [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
                {"type": "text", "text": "this picture, please."},
            ],
        }
    ],
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding a freshly built tiny-llama, where the launcher would build it."""
    data = tmp_path_factory.mktemp("data")
    build_tiny_model(data / "models" / "tiny-llama")
    return data


@pytest.fixture(scope="module")
def tiny_dir(data_dir: Path) -> Path:
    return data_dir / "models" / "tiny-llama"


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> HfTokenCounter:
    return HfTokenCounter.from_path(tiny_dir)


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> PreTrainedTokenizerBase:
    """What vLLM tokenizes with: transformers' own tokenizer of the model."""
    return AutoTokenizer.from_pretrained(tiny_dir)


def chat(messages: list[dict[str, Any]], **extra: object) -> InferenceRequest:
    return typed_request(Api.chat, {"messages": messages, **extra})


def completion(prompt: object) -> InferenceRequest:
    return typed_request(Api.completions, {"prompt": prompt})


def embedding(texts: object) -> InferenceRequest:
    return typed_request(Api.embeddings, {"input": texts})


@pytest.mark.parametrize("messages", CHATS)
def test_hf_chat_count_equals_transformers_apply_chat_template(
    tiny: HfTokenCounter, reference: PreTrainedTokenizerBase, messages: list[dict[str, Any]]
) -> None:
    # vLLM flattens content to strings before it calls transformers; so does the reference here.
    flat = [{**m, "content": content_text(m.get("content"))} for m in messages]
    ids = reference.apply_chat_template(flat, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert tiny.count_prompt(chat(messages)) == len(ids)


def test_hf_chat_without_generation_prompt(tiny: HfTokenCounter, reference: PreTrainedTokenizerBase) -> None:
    ids = reference.apply_chat_template(
        CHATS[1], tokenize=True, add_generation_prompt=False, return_dict=False
    )
    assert tiny.count_prompt(chat(CHATS[1], add_generation_prompt=False)) == len(ids)


@pytest.mark.parametrize(
    "prompt",
    ["Hello world", "<s> already has BOS text </s>", "", "Once upon a time there was a small village."],
)
def test_hf_completion_counts_special_tokens_as_vllm_does(
    tiny: HfTokenCounter, reference: PreTrainedTokenizerBase, prompt: str
) -> None:
    assert tiny.count_prompt(completion(prompt)) == len(reference(prompt)["input_ids"])


def test_hf_completion_lists_and_token_ids(tiny: HfTokenCounter, reference: PreTrainedTokenizerBase) -> None:
    prompts = ["first prompt", "second, longer prompt here"]
    expected = sum(len(reference(p)["input_ids"]) for p in prompts)
    assert tiny.count_prompt(completion(prompts)) == expected
    assert tiny.count_prompt(completion([5, 6, 7])) == 3  # ids go to the engine as is
    assert tiny.count_prompt(completion([[5, 6], [7]])) == 3


def test_hf_embeddings_with_wordpiece_count_cls_and_sep() -> None:
    counter = HfTokenCounter.from_path(minilm_path())
    reference = AutoTokenizer.from_pretrained(minilm_path())
    texts = ["The quick brown fox jumps over the lazy dog.", "Tokenization, WordPiece-style!"]
    assert counter.special_tokens == 2
    assert counter.count_prompt(embedding(texts[0])) == len(reference(texts[0])["input_ids"])
    expected = sum(len(reference(t)["input_ids"]) for t in texts)
    assert counter.count_prompt(embedding(texts)) == expected
    assert counter.count_prompt(embedding([[101, 7592, 102]])) == 3
    # No chat template: OpenAI's rule over WordPiece counts (3 + 3 + "user" + "hello").
    assert counter.count_prompt(chat([{"role": "user", "content": "hello"}])) == 8


def test_a_chat_the_template_rejects_is_counted_by_rule(tiny: HfTokenCounter) -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    counter = HfTokenCounter(tiny.tokenizer, chat_template=template, config={}, source="test")
    messages = [{"role": "user", "content": "Hello world"}]
    expected = 3 + 3 + counter.encode_len("user") + counter.encode_len("Hello world")
    assert counter.count_prompt(chat(messages)) == expected


def test_a_template_that_does_not_compile_is_left_out(
    tiny: HfTokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.admission.tokens"):
        counter = HfTokenCounter(tiny.tokenizer, chat_template="{% for %}", config={}, source="broken")
    assert counter.template is None
    assert "counted without it" in caplog.text
    assert counter.count_prompt(chat([{"role": "user", "content": "Hi"}])) > 6


def test_long_prompts_are_estimated_from_samples_at_a_bounded_cost(tiny: HfTokenCounter) -> None:
    encoded: list[int] = []

    class Spy(HfTokenCounter):
        def encode_len(self, text: str) -> int:
            encoded.append(len(text))
            return super().encode_len(text)

    spy = Spy(tiny.tokenizer, chat_template=None, config={}, source="spy")
    words = "The gateway counts tokens, routes requests and streams answers back to the tenant. "
    prompt = (words * 400)[:30_000]
    exact = tiny.encode_len(prompt)
    counted = spy.count_prompt(completion(prompt)) - spy.special_tokens
    assert sum(encoded) <= EXACT_LIMIT_CHARS
    assert exact <= counted <= exact * 1.25
    short = prompt[:EXACT_LIMIT_CHARS]  # at the limit: still exact
    assert tiny.count_prompt(completion(short)) == tiny.encode_len(short) + 1


@pytest.fixture
def ranks_file(tmp_path: Path) -> Path:
    """Every single byte, then merges that spell "hello" and " world"."""
    merges = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b"ld", b" wor", b" world"]
    tokens = [bytes([b]) for b in range(256)] + merges
    path = tmp_path / "tiny.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % rank for rank, t in enumerate(tokens)))
    return path


def test_tiktoken_counter_from_a_local_ranks_file(ranks_file: Path) -> None:
    counter = TiktokenCounter.from_file(ranks_file)
    assert counter.source == f"tiktoken:{ranks_file}"
    assert counter.count_prompt(completion("hello world")) == 2
    assert counter.count_prompt(completion(["hello", " world", "hi"])) == 1 + 1 + 2
    assert counter.count_prompt(embedding([1, 2, 3])) == 3
    # Special-token text is ordinary text: 13 single bytes.
    assert counter.count_prompt(completion("<|endoftext|>")) == 13


def test_tiktoken_chat_uses_openais_overhead(ranks_file: Path) -> None:
    counter = TiktokenCounter.from_file(ranks_file)
    message = {"role": "user", "content": "hello world"}
    # 3 to prime the reply + per message: 3 + "user" (4 bytes) + 2 for the content.
    assert counter.count_prompt(chat([message])) == 3 + 3 + 4 + 2
    # A name costs 1 more plus its own tokens.
    assert counter.count_prompt(chat([{**message, "name": "bob"}])) == 12 + 1 + 3


def test_tool_messages_and_tool_definitions_count_by_openais_rule(ranks_file: Path) -> None:
    counter = TiktokenCounter.from_file(ranks_file)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    messages = [{"role": "tool", "content": [{"type": "text", "text": "hello"}], "tool_call_id": "c1"}]
    # 3 for the reply, 3 for the message, "tool" (4 bytes), "hello" (1), the tools as compact JSON.
    expected = 3 + 3 + 4 + 1 + counter.encode_len(orjson.dumps(tools).decode())
    assert counter.count_prompt(chat(messages, tools=tools)) == expected


def test_a_bad_ranks_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(base64.b64encode(b"a") + b" 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerConfigError, match="bad.tiktoken:2"):
        TiktokenCounter.from_file(path)


def test_heuristic_ratios() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a" * 29) == 10  # 2.9 ASCII characters a token
    assert estimate_tokens("a" * 30) == 11
    assert estimate_tokens("東京" * 5) == 12  # 30 UTF-8 bytes at 2.5 bytes a token
    assert estimate_tokens("naïve " * 10) == 26  # 50 ASCII characters / 2.9 + 20 bytes of "ï" / 2.5
    assert estimate_tokens("\ud800") == 2  # a lone surrogate does not raise


def test_heuristic_counter_covers_every_api() -> None:
    counter = HeuristicCounter()
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "a" * 29},
        {"role": "assistant", "content": None},
    ]
    # 3 for the reply + per message 4 + role ("user", "assistant": 2 and 4) + content (10, 0)
    assert counter.count_prompt(chat(messages)) == 3 + (4 + 2 + 10) + (4 + 4 + 0)
    assert counter.count_prompt(completion(["a" * 29, "b"])) == 10 + 1 + 2 * 2
    assert counter.count_prompt(embedding([[1, 2], [3]])) == 3
    long_text = "x" * 100_000
    assert counter.count_prompt(completion(long_text)) == estimate_tokens(long_text) + 2


def test_registry_picks_each_pools_counter(
    data_dir: Path, tiny_dir: Path, ranks_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer_json = tiny_dir.resolve() / "tokenizer.json"
    spec = DeploymentSpec(
        pools=[
            PoolSpec(served_name="tiny", model="builtin:tiny-llama", base_port=9000),
            PoolSpec(served_name="minilm", model="builtin:all-minilm-l6-v2", base_port=9001, kind="embed"),
            PoolSpec(served_name="local", model=str(tiny_dir), base_port=9002),
            PoolSpec(served_name="hub", model="meta-llama/Llama-3.1-8B-Instruct", base_port=9003),
            PoolSpec(served_name="unknown-builtin", model="builtin:nope", base_port=9004),
            PoolSpec(served_name="forced", model="builtin:tiny-llama", tokenizer="heuristic", base_port=9005),
            PoolSpec(
                served_name="openai", endpoints=["http://10.0.0.9:80"], tokenizer=f"tiktoken:{ranks_file}"
            ),
            PoolSpec(served_name="file", model="org/m", tokenizer=f"hf:{tokenizer_json}", base_port=9006),
        ]
    )
    with caplog.at_level(logging.INFO, logger="gateway.admission.tokens"):
        counters = build_counters(spec, data_dir)
    sources = {name: counter.source for name, counter in counters.items()}
    assert sources == {
        "tiny": f"hf:{tokenizer_json}",
        "minilm": f"hf:{minilm_path().resolve() / 'tokenizer.json'}",
        "local": f"hf:{tokenizer_json}",
        "hub": "heuristic",
        "unknown-builtin": "heuristic",
        "forced": "heuristic",
        "openai": f"tiktoken:{ranks_file}",
        "file": f"hf:{tokenizer_json}",
    }
    assert f"pool tiny counts prompt tokens with hf:{tokenizer_json}" in caplog.text


def test_an_unbuilt_tiny_model_is_never_built_by_the_gateway(tmp_path: Path) -> None:
    spec = DeploymentSpec(pools=[PoolSpec(served_name="tiny", model="builtin:tiny-llama")])
    assert build_counters(spec, tmp_path)["tiny"].source == "heuristic"
    assert not (tmp_path / "models").exists()


def test_a_configured_tokenizer_that_cannot_load_fails_at_start(tmp_path: Path) -> None:
    spec = DeploymentSpec(pools=[PoolSpec(served_name="m", tokenizer=f"hf:{tmp_path / 'missing'}")])
    with pytest.raises(TokenizerConfigError, match="cannot be loaded"):
        build_counters(spec, tmp_path)
    with pytest.raises(ValidationError, match="tokenizer"):
        PoolSpec(served_name="m", tokenizer="sentencepiece:/x.model")


def test_a_broken_model_tokenizer_falls_back_to_the_heuristic(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    spec = DeploymentSpec(pools=[PoolSpec(served_name="m", model=str(tmp_path))])
    assert build_counters(spec, tmp_path)["m"].source == "heuristic"
