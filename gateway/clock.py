"""Time as a parameter: what a component that makes decisions from time takes instead of ``time``.

A ``Clock`` returns seconds. Routing, health and the supervisor take a monotonic one (durations
and deadlines); the limiter takes a wall one (its months are calendar months). Tests pass a fake
that moves only when told, so they never sleep to wait for time to pass. A ``Sleep`` waits (the
supervisor's pauses), so a test can also replace the waiting itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

monotonic: Clock = time.monotonic
wall: Clock = time.time
