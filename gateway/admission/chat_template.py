"""Render a chat request with a model's own chat template, as vLLM does before it tokenizes.

vLLM hands the messages to ``transformers``' ``apply_chat_template``, which renders the Jinja template
in an immutable sandbox (``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols`` extension, a
``raise_exception`` global, a ``tojson`` filter that does not escape HTML) with the tokenizer's
special tokens (``bos_token``, ``eos_token``, ...) as variables. This module does the same with
``jinja2`` alone, so the gateway counts prompt tokens without importing ``transformers`` or torch.

Before rendering, vLLM turns each message's content into a string when the template expects one
(the common case): text parts joined with newlines, other parts (images, audio) dropped, ``None``
as the empty string. :func:`normalize_messages` does that for every template; a template that walks
content parts itself may render a token or two differently, which a reservation can live with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The content part types vLLM treats as text, and the field each keeps its text in.
TEXT_PART_FIELDS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
    "thinking": "thinking",
}
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


def content_text(content: Any) -> str:
    """A message's content as vLLM gives it to a string-content template."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and (field := TEXT_PART_FIELDS.get(part.get("type", ""))):
            text = part.get(field)
            if isinstance(text, str):
                texts.append(text)
    return "\n".join(texts)


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """The request's messages with string content; anything that is not a message is left out."""
    if not isinstance(messages, list):
        return []
    return [{**m, "content": content_text(m.get("content"))} for m in messages if isinstance(m, dict)]


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


def render_chat(template: jinja2.Template, body: Mapping[str, Any], special_tokens: Mapping[str, Any]) -> str:
    """The prompt text vLLM would build for a chat request ``body`` (generation prompt included)."""
    variables = dict(special_tokens)
    extra = body.get("chat_template_kwargs")
    if isinstance(extra, dict):
        variables.update((k, v) for k, v in extra.items() if isinstance(k, str) and k not in _RESERVED)
    tools = body.get("tools")
    try:
        return template.render(
            **variables,
            messages=normalize_messages(body.get("messages")),
            tools=tools if isinstance(tools, list) and tools else None,
            documents=None,
            add_generation_prompt=body.get("add_generation_prompt", True) is not False,
        )
    except Exception as exc:  # a template may fail in any way on odd input; the caller falls back
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
