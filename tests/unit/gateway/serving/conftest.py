"""The serving stack over the fake upstream; each test scripts the engine's answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.fake_upstream import in_order
from tests.support.serving import ServingStack, serving_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ServingStack]:
    """Set ``stack.upstream.handler`` to script the engines."""
    async with serving_stack(tmp_path, in_order()) as built:
        yield built
