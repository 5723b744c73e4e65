"""Deterministic, L2-normalised pseudo-embeddings."""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Hashable, Sequence


def embed(tokens: Sequence[Hashable], dim: int) -> list[float]:
    """A unit vector of ``dim`` floats derived only from the input's tokens.

    SHAKE-256 (not ``hash()``) so the same text gives the same vector in every process;
    whitespace differences do not matter because the input is compared as its token sequence.
    """
    digest = hashlib.shake_256("\x1f".join(map(str, tokens)).encode()).digest(2 * dim)
    raw = struct.unpack(f"<{dim}h", digest)
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [value / norm for value in raw]
