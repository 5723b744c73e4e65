"""The tiny model is deterministic, cached, and loadable by transformers with its chat template."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import AutoTokenizer

from engines.tiny_model import HEAD_DIM, MARKER, build_tiny_model, is_complete


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_build_is_deterministic_cached_and_servable(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a")
    second = build_tiny_model(tmp_path / "b")
    assert _digest(first) == _digest(second)
    assert is_complete(first)

    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(first) == first  # cached: not rebuilt
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime

    config = json.loads((first / "config.json").read_text())
    assert config["head_dim"] == HEAD_DIM == 64  # vLLM's CPU attention rejects smaller heads
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert tokenizer.vocab_size <= config["vocab_size"] == len(tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], tokenize=False,
                                           add_generation_prompt=True)  # fmt: skip
    assert prompt.startswith("<s><|user|>\nHello!</s>") and prompt.endswith("<|assistant|>\n")


def test_partial_build_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text("{}")  # an interrupted earlier build: no marker
    build_tiny_model(target)
    assert (target / MARKER).exists() and (target / "model.safetensors").exists()
