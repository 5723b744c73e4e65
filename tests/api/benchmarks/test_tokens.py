"""The token-count benchmark's inputs are what its report says they are."""

from __future__ import annotations

import pytest

from benchmarks.tokens import english_samples, ratios, typical_chat
from gateway.admission.tokens import HeuristicCounter


def test_typical_chat_has_three_messages_of_the_asked_words() -> None:
    messages = typical_chat(200)["messages"]
    assert isinstance(messages, list) and len(messages) == 3
    assert sum(len(m["content"].split()) for m in messages) == 200


def test_ratio_tables_cover_every_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"chat", "README"} <= english_samples().keys()
    ratios({"heuristic": HeuristicCounter()})
    out = capsys.readouterr().out
    assert "| heuristic | 2.89 |" in out  # the chat sample is plain ASCII: 2.9 characters a token
    assert "| zh | ru | fr | de |" in out
