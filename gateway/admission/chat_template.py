"""Render a chat request with a model's own chat template, as vLLM does before it tokenizes.

vLLM hands the messages to ``transformers``' ``apply_chat_template``, which renders the Jinja template
in an immutable sandbox (``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols`` extension, a
``raise_exception`` global, a ``tojson`` filter that does not escape HTML) with the tokenizer's
special tokens (``bos_token``, ``eos_token``, ...) as variables. This module does the same with
``jinja2`` alone, so the gateway counts prompt tokens without importing ``transformers`` or torch.

Before rendering, vLLM turns each message's content into a string when the template expects one
(the common case): text parts joined with newlines, other parts (images, audio) dropped, ``None``
as the empty string. A typed :class:`gateway.inference.ChatMessage` carries its content flattened
that way, and :func:`normalize_messages` hands every template those strings; a template that walks
content parts itself may render a token or two differently, which a reservation can live with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.inference import ChatMessage, ChatPrompt

# Variables the renderer sets itself; ``chat_template_kwargs`` from a request cannot replace them.
_RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


class ChatTemplateError(ValueError):
    """The template does not compile, or rejected the conversation (``raise_exception``)."""


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` (assistant-mask markers): rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' override: Jinja's own ``tojson`` escapes <, >, & and ' for HTML.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile once per template text; raises :class:`ChatTemplateError` on a syntax error."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from exc


def normalize_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as sent, with their content as the string vLLM makes of it."""
    return [{**m.sent, "content": m.text} for m in messages]


def special_token_variables(tokenizer_config: Mapping[str, Any]) -> dict[str, Any]:
    """``bos_token``, ``eos_token``, … as strings, the way transformers passes them to a template."""
    variables: dict[str, Any] = {}
    for key, value in tokenizer_config.items():
        if key.endswith("_token"):
            text = value.get("content") if isinstance(value, dict) else value
            if isinstance(text, str):
                variables[key] = text
    extra = tokenizer_config.get("additional_special_tokens")
    if isinstance(extra, list):
        variables["additional_special_tokens"] = [
            item.get("content") if isinstance(item, dict) else item for item in extra
        ]
    return variables


def render_chat(template: jinja2.Template, chat: ChatPrompt, special_tokens: Mapping[str, Any]) -> str:
    """The prompt text vLLM would build for ``chat`` (generation prompt included unless turned off)."""
    variables = dict(special_tokens)
    variables.update((k, v) for k, v in chat.template_kwargs.items() if k not in _RESERVED)
    try:
        return template.render(
            **variables,
            messages=normalize_messages(chat.messages),
            tools=list(chat.tools) or None,
            documents=None,
            add_generation_prompt=chat.add_generation_prompt,
        )
    except Exception as exc:  # a template may fail in any way on odd input; the caller falls back
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
