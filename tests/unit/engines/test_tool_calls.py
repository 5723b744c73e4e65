"""A pool's tool-call parser reaches vLLM's command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from engines.commands import vllm_argv
from gateway.config.pools import PoolSpec, load_spec

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_a_pools_tool_call_parser_turns_on_auto_tool_choice() -> None:
    pool = PoolSpec(served_name="llama", tool_call_parser="llama3_json", vllm_args=["--dtype", "float32"])
    argv = vllm_argv(pool, "/models/llama", 8100, python="python")
    assert argv[-6:] == [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "llama3_json",
        "--dtype",
        "float32",
        "--enable-prompt-tokens-details",  # added to every engine (cached prompt tokens)
    ]


def test_no_parser_no_flags_and_a_parser_in_vllm_args_is_not_doubled() -> None:
    assert "--enable-auto-tool-choice" not in vllm_argv(PoolSpec(served_name="m"), "m", 8100)
    own = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    pool = PoolSpec(served_name="m", tool_call_parser="llama3_json", vllm_args=own)
    assert vllm_argv(pool, "m", 8100).count("--tool-call-parser") == 1


def test_a_parser_name_is_one_word() -> None:
    with pytest.raises(ValidationError):
        PoolSpec(served_name="m", tool_call_parser="llama3_json --api-key x")


@pytest.mark.parametrize(
    ("config", "parser"),
    # The tiny demo model's tokenizer lacks llama3_json's <|python_tag|> token: vLLM would refuse
    # to start with that parser, so the demo uses one that needs no special token.
    [("local.yaml", "pythonic"), ("gpu-llama.yaml", "llama3_json")],
)
def test_the_shipped_llama_pools_parse_tool_calls(config: str, parser: str) -> None:
    assert all(pool.tool_call_parser == parser for pool in load_spec(CONFIGS / config).pools)
