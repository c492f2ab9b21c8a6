"""Time, injected: the hub, the limiter and the simulated agent read time only through a Clock.

Production uses :class:`SystemClock`; tests use :class:`dispatch.testing.ManualClock`, which
moves only when the test says so, so no test sleeps to order events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic time (pacing, timeouts) and wall time (timestamps in the store)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware UTC."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`monotonic` has reached ``deadline``; cancellable."""
        ...


class SystemClock:
    """The event loop's clock for pacing, the system clock for timestamps."""

    def monotonic(self) -> float:
        return anyio.current_time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)

    def __repr__(self) -> str:
        return "SystemClock()"
