"""The tiny model is deterministic, cached, and loadable by transformers with its chat template."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import safe_open
from transformers import AutoTokenizer

from engines.models import SMALL_LLAMA, TINY_LLAMA, resolve_model_source
from engines.tiny_model import HEAD_DIM, MARKER, SMALL, TINY, build_tiny_model, is_complete


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
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello!"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.startswith("<s><|user|>\nHello!</s>") and prompt.endswith("<|assistant|>\n")


def test_partial_build_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text("{}")  # an interrupted earlier build: no marker
    build_tiny_model(target)
    assert (target / MARKER).exists() and (target / "model.safetensors").exists()


def test_small_shape_is_its_own_build_with_its_own_size(tmp_path: Path) -> None:
    tiny = Path(resolve_model_source(TINY_LLAMA, tmp_path))
    small = Path(resolve_model_source(SMALL_LLAMA, tmp_path))
    assert tiny != small and is_complete(small, SMALL) and not is_complete(small, TINY)
    assert not is_complete(tiny, SMALL)  # a tiny build is never taken for the small one
    config = json.loads((small / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (512, 4, 8)
    assert config["head_dim"] * config["num_attention_heads"] == SMALL.hidden
    with safe_open(str(small / "model.safetensors"), "np") as weights:
        assert weights.get_tensor("model.layers.3.mlp.down_proj.weight").shape == (512, 1536)
        assert "model.layers.4.mlp.down_proj.weight" not in weights.keys()  # noqa: SIM118
    # Same tokenizer for every shape, so prompts cost the same tokens on both.
    assert (small / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()
