"""The edge: OpenAI request bodies into typed requests, and the bytes the engine gets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.inference import ChatMessage, TextInput, content_text, parse_request
from gateway.records import Api
from tests.support.inference import KEY, typed_request

MESSAGES = [{"role": "user", "content": "hi"}]
ROLES = "'system', 'developer', 'user', 'assistant', 'tool', 'function'"


def test_streams_always_ask_the_engine_for_usage_and_remember_what_the_client_asked() -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "temperature": 0.3, "vendor": {"a": [1]}}
    body["stream_options"] = {"x": 1}
    request = typed_request(Api.chat, body)
    sent = orjson.loads(request.body)
    assert sent["stream_options"] == {"x": 1, "include_usage": True, "continuous_usage_stats": True}
    assert (sent["temperature"], sent["vendor"]) == (0.3, {"a": [1]})  # unknown fields pass through
    assert (request.stream, request.include_usage, request.continuous_usage) == (True, False, False)


def test_a_stream_without_stream_options_gets_them_and_the_client_choice_is_kept() -> None:
    bare = typed_request(Api.completions, {"prompt": "x", "stream": True})
    assert orjson.loads(bare.body)["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }
    assert (bare.include_usage, bare.continuous_usage) == (False, False)
    options = {"include_usage": True, "continuous_usage_stats": True}
    asked = typed_request(Api.chat, {"messages": MESSAGES, "stream": True, "stream_options": options})
    assert (asked.include_usage, asked.continuous_usage) == (True, True)


def test_a_non_streamed_body_goes_to_the_engine_byte_for_byte() -> None:
    raw = b'{ "model": "m",\n "prompt": [1, 2, 3], "user": "u1", "logit_bias": {"7": -100},'
    raw += b' "seed": 123456789012345678901234567890 }'
    request = parse_request(Api.completions, raw, key=KEY, request_id="req_1", session_id="s-9")
    assert request.body == raw  # a re-encoding would turn the seed into a float
    assert (request.model, request.stream, request.user) == ("m", False, "u1")
    assert (request.key, request.request_id, request.session_id) == (KEY, "req_1", "s-9")
    assert request.prompt == TextInput(token_ids=3)
    assert (request.chat, request.input) == (None, None)


@pytest.mark.parametrize(
    ("api", "caps", "expected"),
    [
        (Api.chat, {"max_completion_tokens": 7, "max_tokens": 100}, 7),
        (Api.chat, {"max_tokens": 100}, 100),
        (Api.chat, {"max_completion_tokens": None, "max_tokens": 5}, 5),
        (Api.chat, {}, None),
        (Api.completions, {"max_tokens": 12}, 12),
        (Api.completions, {"max_completion_tokens": 7}, None),  # not a completions field
    ],
)
def test_max_tokens_is_the_cap_the_client_set(api: Api, caps: dict[str, Any], expected: int | None) -> None:
    body = {"messages": MESSAGES} if api is Api.chat else {"prompt": "x"}
    assert typed_request(api, {**body, **caps}).max_tokens == expected


def test_generation_fields_are_typed_with_openais_defaults() -> None:
    default = typed_request(Api.chat, {"messages": MESSAGES})
    assert (default.n, default.stop, default.service_tier, default.user, default.session_id) == (
        1,
        (),
        None,
        None,
        None,
    )
    chosen = typed_request(Api.chat, {"messages": MESSAGES, "n": 3, "stop": "\n", "service_tier": "flex"})
    assert (chosen.n, chosen.stop, chosen.service_tier) == (3, ("\n",), "flex")
    assert orjson.loads(chosen.body)["service_tier"] == "flex"  # passed through to the engine
    listed = typed_request(Api.completions, {"prompt": "x", "stop": ["END", "###"]})
    assert listed.stop == ("END", "###")
    assert typed_request(Api.completions, {"prompt": "x", "stop": None}).stop == ()


def test_chat_messages_are_typed_and_keep_what_a_template_may_read() -> None:
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief.", "name": "ops"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {
            "role": "tool",
            "content": [{"type": "text", "text": "42"}, {"type": "image_url"}],
            "tool_call_id": "c1",
        },
        {"role": "user", "content": "a name that is not a string", "name": 7},
    ]
    tools = [{"type": "function", "function": {"name": "f"}}]
    body = {"messages": messages, "tools": tools, "chat_template_kwargs": {"think": True}}
    chat = typed_request(Api.chat, {**body, "add_generation_prompt": False}).chat
    assert chat is not None
    assert chat.messages == (
        ChatMessage(role="system", text="Be brief.", name="ops", sent=messages[0]),
        ChatMessage(role="assistant", text="", sent=messages[1]),
        ChatMessage(role="tool", text="42", sent=messages[2]),
        ChatMessage(role="user", text="a name that is not a string", sent=messages[3]),
    )
    assert chat.messages[1].sent["tool_calls"] == [tool_call]
    assert chat.opening(2) == chat.messages[:2]
    assert (chat.tools, chat.template_kwargs, chat.add_generation_prompt) == (
        tuple(tools),
        {"think": True},
        False,
    )
    plain = typed_request(Api.chat, {"messages": MESSAGES, "tools": "not a list"}).chat
    assert plain is not None and (plain.tools, plain.template_kwargs, plain.add_generation_prompt) == (
        (),
        {},
        True,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", TextInput(texts=("text",))),
        (["a", "b"], TextInput(texts=("a", "b"))),
        ([1, 2, 3], TextInput(token_ids=3)),
        ([[1, 2], [3]], TextInput(token_ids=3)),
        ([], TextInput()),
    ],
)
def test_prompts_and_inputs_of_every_shape(value: Any, expected: TextInput) -> None:
    assert typed_request(Api.completions, {"prompt": value}).prompt == expected
    embedding = typed_request(Api.embeddings, {"input": value})
    assert (embedding.input, embedding.prompt, embedding.chat, embedding.stream) == (
        expected,
        None,
        None,
        False,
    )


def test_single_text_is_one_text_prompt_only() -> None:
    assert TextInput(texts=("once",)).single_text == "once"
    assert TextInput(texts=("a", "b")).single_text is None
    assert TextInput(texts=("a",), token_ids=2).single_text is None


def test_content_is_flattened_as_vllm_does_for_string_templates() -> None:
    parts = [
        {"type": "text", "text": "What is"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        "plain",
        {"type": "input_text", "text": "in it?"},
        {"type": "refusal", "refusal": "no"},
        {"type": "text"},  # no text: skipped, as vLLM skips it
        {"type": "text", "text": 5},  # not text either
    ]
    assert content_text(parts) == "What is\nplain\nin it?\nno"
    assert content_text("as is") == "as is"
    assert content_text(None) == ""
    assert content_text(42) == ""


@pytest.mark.parametrize(
    ("api", "body", "param", "message"),
    [
        (Api.chat, {"messages": MESSAGES}, "model", "Missing required parameter: 'model'."),
        (Api.chat, {"model": "", "messages": MESSAGES}, "model", None),
        (Api.chat, {"model": "m", "messages": "hi"}, "messages", None),
        (Api.completions, {"model": "m"}, "prompt", "Missing required parameter: 'prompt'."),
        (Api.embeddings, {"model": "m", "input": {"a": 1}}, "input", None),
        (Api.chat, {"model": "m", "messages": MESSAGES, "n": 0}, "n", None),
        (Api.chat, {"model": "m", "messages": MESSAGES, "max_tokens": -1}, "max_tokens", None),
        (Api.completions, {"model": "m", "prompt": "x", "stop": 5}, "stop", None),
        (Api.completions, {"model": "m", "prompt": "x", "stop": ["a", 1]}, "stop", None),
        # Strict as OpenAI is: no string for a number, no word for a boolean, OpenAI's bounds.
        (Api.chat, {"model": "m", "messages": MESSAGES, "max_tokens": "10"}, "max_tokens", None),
        (Api.chat, {"model": "m", "messages": MESSAGES, "max_tokens": 10.5}, "max_tokens", None),
        (
            Api.chat,
            {"model": "m", "messages": MESSAGES, "max_completion_tokens": 2**40},
            "max_completion_tokens",
            None,
        ),
        (Api.chat, {"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream", None),
        (Api.chat, {"model": "m", "messages": MESSAGES, "stream": 1}, "stream", None),
        (Api.chat, {"model": "m", "messages": MESSAGES, "n": "2"}, "n", None),
        (Api.completions, {"model": "m", "prompt": "x", "best_of": 1000}, "best_of", None),
        (Api.completions, {"model": "m", "prompt": "x", "best_of": 2, "n": 3}, "best_of", None),
        (Api.chat, {"model": "m", "messages": MESSAGES, "best_of": "3"}, "best_of", None),
        (
            Api.chat,
            {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options",
            None,
        ),
        (Api.chat, {"model": "m" * 257, "messages": MESSAGES}, "model", None),
        (Api.embeddings, {"model": "m" * 257, "input": "x"}, "model", None),
        (
            Api.chat,
            {"model": "m", "messages": [*MESSAGES, {"role": "wizard", "content": "x"}]},
            "messages.[1].role",
            f"Invalid value: 'wizard'. Supported values are: {ROLES}.",
        ),
        (
            Api.chat,
            {"model": "m", "messages": [{"content": "no role"}]},
            "messages.[0].role",
            "Missing required parameter: 'messages.[0].role'.",
        ),
        (
            Api.chat,
            {"model": "m", "messages": [{"role": ["user"], "content": "x"}]},
            "messages.[0].role",
            f"Invalid value: '[\"user\"]'. Supported values are: {ROLES}.",
        ),
    ],
)
def test_invalid_bodies_name_the_parameter(
    api: Api, body: dict[str, object], param: str, message: str | None
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(api, orjson.dumps(body), key=KEY, request_id="req_1")
    code = "missing_required_parameter" if message and message.startswith("Missing") else "invalid_value"
    assert (info.value.param, info.value.code, info.value.status_code) == (param, code, 400)
    assert info.value.message == message or info.value.message.startswith(f"Invalid value for '{param}': ")


@pytest.mark.parametrize(
    ("api", "raw", "param", "message"),
    [
        (Api.chat, b'{"model": "m",', None, "The request body is not valid JSON: "),
        (Api.chat, b"[1, 2]", None, "The request body must be a JSON object."),
        (
            Api.chat,
            orjson.dumps({"model": "m", "messages": MESSAGES, "stream_options": {"include_usage": True}}),
            "stream_options",
            "stream_options is only allowed when stream is true.",
        ),
        (
            Api.embeddings,
            orjson.dumps({"model": "m", "input": "x", "stream_options": {"include_usage": True}}),
            "stream_options",
            "stream_options is only allowed when stream is true.",
        ),
    ],
)
def test_bodies_the_gateway_cannot_take(api: Api, raw: bytes, param: str | None, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(api, raw, key=KEY, request_id="req_1")
    assert (info.value.param, info.value.status_code) == (param, 400)
    assert info.value.message.startswith(message)


def test_empty_stream_options_without_a_stream_are_let_through() -> None:
    request = typed_request(Api.chat, {"messages": MESSAGES, "stream_options": {}})
    assert orjson.loads(request.body)["stream_options"] == {}  # as sent
    assert (request.stream, request.include_usage) == (False, False)


def test_every_openai_role_and_a_bounded_best_of_are_taken() -> None:
    roles = ["developer", "system", "user", "assistant", "tool", "function"]
    request = typed_request(Api.chat, {"messages": [{"role": role, "content": "x"} for role in roles]})
    assert request.chat is not None and [m.role for m in request.chat.messages] == roles
    assert typed_request(Api.completions, {"prompt": "x", "best_of": 20, "n": 20}).n == 20


def nested_body(depth: int, stream: bool = False) -> bytes:
    """A chat body ``depth`` levels deep (written by hand: orjson cannot encode past 255)."""
    inner = b'{"a":' * (depth - 1) + b"0" + b"}" * (depth - 1)
    head = orjson.dumps({"model": "m", "messages": MESSAGES, "stream": stream})[:-1]
    return head + b',"metadata":' + inner + b"}"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("depth", [65, 300, 1000])
def test_deeply_nested_bodies_are_refused_before_any_work(depth: int, stream: bool) -> None:
    """Bodies nested 253-1,023 deep passed orjson.loads and broke re-encoding: a 500 per request."""
    with pytest.raises(InvalidRequestError) as info:
        parse_request(Api.chat, nested_body(depth, stream), key=KEY, request_id="req_1")
    assert (info.value.status_code, info.value.param, info.value.code) == (400, None, "invalid_json")
    assert info.value.message == "The request body is nested more than 64 levels deep."


def test_a_body_at_the_depth_limit_and_a_broad_shallow_one_are_taken() -> None:
    deep = parse_request(Api.chat, nested_body(64, stream=True), key=KEY, request_id="req_1")
    assert orjson.loads(deep.body)["metadata"] == orjson.loads(nested_body(64))["metadata"]
    broad = typed_request(Api.completions, {"prompt": [[1, 2]] * 500})  # many brackets, depth 3
    assert broad.prompt == TextInput(token_ids=1000)


def test_a_whole_number_written_with_a_fraction_is_an_integer() -> None:
    """JSON Schema's ``integer`` (the API's own schema) takes ``2.0``; schemathesis sent
    ``{"n": 100.0}``, ``{"best_of": 1.0}`` and ``{"max_output_tokens": 184.0}`` and each was a 400.
    ``10.5`` and ``"10"`` stay refused (see ``test_invalid_bodies_name_the_parameter``)."""
    chat = typed_request(Api.chat, {"messages": MESSAGES, "n": 2.0, "max_completion_tokens": 10.0})
    assert (chat.n, chat.max_tokens) == (2, 10)
    completion = typed_request(Api.completions, {"prompt": "x", "best_of": 3.0, "n": 3.0, "max_tokens": 0.0})
    assert (completion.n, completion.max_tokens) == (3, 0)
    response = typed_request(Api.responses, {"input": "x", "max_output_tokens": 184.0})
    assert response.max_tokens == 184
    with pytest.raises(InvalidRequestError) as huge:
        typed_request(Api.chat, {"messages": MESSAGES, "max_tokens": 1e300})
    assert huge.value.param == "max_tokens"
