"""A bounded LRU of prompt-prefix block hashes, behaving like vLLM's automatic prefix cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence


class PrefixCache:
    """Remembers full blocks of ``block_size`` tokens, each keyed by the hash of its whole prefix.

    ``query`` returns the hit count the way vLLM reports it: the tokens in the leading blocks already
    seen, never counting the last prompt token (vLLM always recomputes it to produce logits).
    """

    def __init__(self, block_size: int, capacity: int) -> None:
        self._block_size = block_size
        self._capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()

    def query(self, tokens: Sequence[Hashable]) -> int:
        """Look up then insert the prompt's full blocks; return the number of cached tokens hit."""
        if self._capacity == 0:
            return 0
        size = self._block_size
        cacheable = (len(tokens) - 1) // size  # whole blocks before the last token
        hits = 0
        missed = False
        parent = 0
        for index in range(len(tokens) // size):
            # Chained hash: a block only matches when everything before it matches too.
            parent = hash((parent, *tokens[index * size : (index + 1) * size]))
            if parent in self._blocks:
                self._blocks.move_to_end(parent)
                if not missed and index < cacheable:
                    hits += size
            else:
                missed = True
                self._blocks[parent] = None
                if len(self._blocks) > self._capacity:
                    self._blocks.popitem(last=False)
        return hits
