"""Deterministic stand-ins for a tokenizer and a model's output.

The token-count rule (documented in the package docstring, relied on by tests):

* chat: each message contributes 3 template tokens (start, role, end) plus the whitespace-separated
  words of its content (a string, or the ``text`` of each text part of a content list);
* completions: the whitespace-separated words of the prompt, or the length of a token-id list;
* embeddings: the same as completions, per input.

Generated token ``i`` is ``VOCABULARY[i % len(VOCABULARY)]``: a short word with a leading space.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

VOCABULARY: tuple[str, ...] = (
    " lorem",
    " ipsum",
    " dolor",
    " sit",
    " amet",
    " consectetur",
    " adipiscing",
    " elit",
    " sed",
    " do",
    " eiusmod",
    " tempor",
    " incididunt",
    " ut",
    " labore",
    " et",
)

_FULL_CYCLE = "".join(VOCABULARY)


def content_words(content: Any) -> list[str]:
    """The words of a message's content: a string, or a list of parts whose text parts count."""
    if isinstance(content, str):
        return content.split()
    if isinstance(content, list):
        words: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                words.extend(part["text"].split())
        return words
    return []


def chat_prompt_tokens(messages: Sequence[dict[str, Any]]) -> list[Hashable]:
    """The simulated token sequence of a chat prompt (its length is the prompt token count)."""
    tokens: list[Hashable] = []
    for message in messages:
        role = message.get("role")
        tokens.append("<|start|>")
        tokens.append(role if isinstance(role, str) else "")
        tokens.extend(content_words(message.get("content")))
        tokens.append("<|end|>")
    return tokens


def text_prompt_tokens(prompt: str | list[int]) -> list[Hashable]:
    """The simulated token sequence of a completions or embeddings input."""
    if isinstance(prompt, str):
        return list(prompt.split())
    return list(prompt)


def generated_text(count: int) -> str:
    """The full text of ``count`` generated tokens (what a non-streaming response carries)."""
    laps, rest = divmod(count, len(VOCABULARY))
    return _FULL_CYCLE * laps + "".join(VOCABULARY[:rest])
