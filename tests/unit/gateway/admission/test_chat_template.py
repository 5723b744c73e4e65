"""Rendering chat templates as vLLM and transformers do, with jinja2 alone."""

from __future__ import annotations

import pytest

from gateway.admission.chat_template import (
    ChatTemplateError,
    compile_template,
    normalize_messages,
    render_chat,
    special_token_variables,
)
from gateway.inference import ChatPrompt
from gateway.records import Api
from tests.support.inference import typed_request


def chat(**body: object) -> ChatPrompt:
    """A chat request's typed prompt, as the edge makes it."""
    prompt = typed_request(Api.chat, body).chat
    assert prompt is not None
    return prompt


def test_normalize_gives_templates_the_messages_as_sent_with_flattened_content() -> None:
    messages = [
        {"role": "user", "content": None, "name": "bob"},
        {
            "role": "tool",
            "content": [{"type": "text", "text": "4"}, {"type": "text", "text": "2"}],
            "tool_call_id": "c",
        },
    ]
    assert normalize_messages(chat(messages=messages).messages) == [
        {"role": "user", "content": "", "name": "bob"},
        {"role": "tool", "content": "4\n2", "tool_call_id": "c"},
    ]
    assert normalize_messages(()) == []


def test_special_tokens_come_from_the_tokenizer_config_as_strings() -> None:
    config = {
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "lstrip": False},
        "pad_token": None,
        "additional_special_tokens": ["<|user|>", {"content": "<|bot|>"}],
        "model_max_length": 2048,
    }
    assert special_token_variables(config) == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "additional_special_tokens": ["<|user|>", "<|bot|>"],
    }


def test_render_passes_generation_prompt_tools_and_template_kwargs_but_not_overrides() -> None:
    template = compile_template(
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
        "{% if tools %}{{ tools | tojson }}{% endif %}{% if flavour %}<{{ flavour }}>{% endif %}"
        "{% if add_generation_prompt %}>>{% endif %}"
    )
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "tools": [{"type": "function", "function": {"name": "f<x>"}}],
        "chat_template_kwargs": {"flavour": "mint", "messages": [], "bos_token": "<B>"},
    }
    rendered = render_chat(template, chat(**body), {"bos_token": "<s>"})
    # tojson does not HTML-escape; kwargs may set template variables (bos_token too, as in transformers)
    # but never replace the messages.
    assert rendered == '<B>[user:hi][{"type": "function", "function": {"name": "f<x>"}}]<mint>>>'
    assert render_chat(template, chat(**{**body, "add_generation_prompt": False, "tools": []}), {}).endswith(
        "<mint>"
    )


def test_raise_exception_and_runtime_errors_become_chat_template_errors() -> None:
    template = compile_template(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}"
        "{{ messages[0].content | upper }}"
    )
    assert render_chat(template, chat(messages=[{"role": "user", "content": "ok"}]), {}) == "OK"
    with pytest.raises(ChatTemplateError, match="first message must be user"):
        render_chat(template, chat(messages=[{"role": "system", "content": "x"}]), {})
    with pytest.raises(ChatTemplateError):
        render_chat(template, ChatPrompt(sent=()), {})  # messages[0] of an empty list


def test_generation_tags_loop_controls_and_sandbox() -> None:
    template = compile_template(
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}{{ strftime_now('%Y') | length }}"
    )
    assert (
        render_chat(
            template, chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), {}
        )
        == "a4"
    )
    mutating = compile_template("{% set x = messages.append(1) %}{{ messages | length }}")
    with pytest.raises(ChatTemplateError):  # immutable sandbox: a template cannot change the request
        render_chat(mutating, ChatPrompt(sent=()), {})
    with pytest.raises(ChatTemplateError, match="does not compile"):
        compile_template("{% for %}")
