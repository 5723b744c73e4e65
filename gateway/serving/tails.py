"""The tails of cut streams: what an engine still sends after the client left, read in the
background so that the response to the client is not held up and the bill is what the engine made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class TailReader:
    """Runs each cut stream's tail read (``Exchange._finish_after_tail``) as a task, and waits for
    the ones still running at shutdown, before the ledger closes."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s  # how long an engine may take to stop once told
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("reading a cut stream's tail failed", exc_info=task.exception())

    async def wait(self) -> None:
        """Until the tails being read now are done (at shutdown: before the ledger closes)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.timeout_s + 1.0)
