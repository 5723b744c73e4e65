"""The edge for the Responses API, chat roles and the engine extensions a tenant may not send."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.inference import ChatMessage
from gateway.protocol import ENGINE_ONLY_FIELDS
from gateway.records import Api
from gateway.routing.policies import affinity_key
from tests.support.inference import typed_request

USER = [{"role": "user", "content": "hi"}]


def refused(api: Api, body: dict[str, object]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as raised:
        typed_request(api, body)
    return raised.value


def test_a_response_request_is_typed_like_a_chat() -> None:
    body = {
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "reasoning", "summary": []},
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "max_output_tokens": 64,
        "stream": True,
        "store": True,
    }
    request = typed_request(Api.responses, body)
    assert (request.api, request.stream, request.max_tokens, request.include_usage) == (
        Api.responses,
        True,
        64,
        False,
    )
    assert request.body == orjson.dumps({"model": "m", **body})  # relayed as sent
    assert request.chat is not None
    assert [(m.role, m.text) for m in request.chat.messages] == [
        ("system", "Be brief."),
        ("user", "weather in Paris?"),
        ("assistant", '{"city":"Paris"}'),
        ("tool", "sunny"),
    ]
    function = {"name": "get_weather", "parameters": {"type": "object"}}
    assert request.chat.tools == ({"type": "function", "function": function},)


def test_a_string_input_is_one_user_turn_and_keys_affinity() -> None:
    request = typed_request(Api.responses, {"input": "tell me a story"})
    assert request.chat is not None
    assert request.chat.messages == (ChatMessage("user", "tell me a story", None, request.chat.sent[0]),)
    assert affinity_key(request) == "prefix:tell me a story"
    assert (request.stream, request.max_tokens) == (False, None)


@pytest.mark.parametrize("field", ["previous_response_id", "background"])
def test_what_needs_stored_responses_is_refused(field: str) -> None:
    error = refused(Api.responses, {"input": "hi", field: "resp_1" if field != "background" else True})
    assert (error.status_code, error.param, error.code) == (400, field, "unsupported_parameter")
    assert "stores no responses" in error.message


def test_a_response_without_input_names_it() -> None:
    error = refused(Api.responses, {})
    assert (error.param, error.code, error.message) == (
        "input",
        "missing_required_parameter",
        "Missing required parameter: 'input'.",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_output_tokens": "10"}, "max_output_tokens"),
        ({"max_output_tokens": 2**63}, "max_output_tokens"),  # past the limiter's 64-bit counters
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"store": "no"}, "store"),
        ({"model": "m" * 257}, "model"),
    ],
)
def test_a_response_request_is_as_strictly_typed_as_a_chat(body: dict[str, object], param: str) -> None:
    error = refused(Api.responses, {"input": "hi", **body})
    assert (error.status_code, error.param, error.code) == (400, param, "invalid_value")


@pytest.mark.parametrize("api", [Api.chat, Api.completions, Api.responses])
@pytest.mark.parametrize("field", ["priority", "kv_transfer_params", "chat_template", "vllm_xargs"])
def test_engine_only_fields_are_refused(api: Api, field: str) -> None:
    body = {"messages": USER, "prompt": "x", "input": "x", field: 1}
    error = refused(api, body)
    assert (error.status_code, error.param, error.code) == (400, field, "unsupported_parameter")
    assert error.message == f"'{field}' is an engine setting this gateway does not accept from clients."


def test_vllm_sampling_extensions_pass_through() -> None:
    extensions = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "min_tokens": 2, "stop_token_ids": [2]}
    request = typed_request(Api.chat, {"messages": USER, **extensions})
    assert orjson.loads(request.body) == {"model": "m", "messages": USER, **extensions}
    assert ENGINE_ONLY_FIELDS.isdisjoint(extensions)


def test_roles_outside_openais_set_are_refused() -> None:
    error = refused(Api.chat, {"messages": [*USER, {"role": "wizard", "content": "x"}]})
    assert (error.param, error.code) == ("messages.[1].role", "invalid_value")
    assert error.message == (
        "Invalid value: 'wizard'. Supported values are: "
        "'system', 'developer', 'user', 'assistant', 'tool', 'function'."
    )
    error = refused(Api.chat, {"messages": [{"content": "x"}]})
    assert (error.param, error.code) == ("messages.[0].role", "missing_required_parameter")


def test_every_openai_role_is_taken() -> None:
    roles = ["system", "developer", "user", "assistant", "tool", "function"]
    request = typed_request(Api.chat, {"messages": [{"role": r, "content": "x"} for r in roles]})
    assert request.chat is not None and [m.role for m in request.chat.messages] == roles
