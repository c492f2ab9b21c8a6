"""Pacing: an exact sliding-window limit on dial starts.

``SlidingWindowLimiter(limit=N, window=60)`` promises that no half-open interval of ``window``
seconds ever holds more than ``N`` dial starts, retries included, whatever the history (a leaky
bucket such as aiolimiter admits up to 2N-1 in one window after an idle period). Waiters are
served first come, first served, and each sleeps until the exact moment a start becomes
allowed: there is no polling.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import anyio

from .clock import Clock, SystemClock

__all__ = ["LimiterStatistics", "SlidingWindowLimiter"]


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    limit: int
    window: float
    starts_in_window: int
    waiting: int


class SlidingWindowLimiter:
    """At most ``limit`` acquisitions in any ``window`` seconds (half-open intervals)."""

    def __init__(self, limit: int, window: float = 60.0, *, clock: Clock | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.limit = limit
        self.window = window
        self._clock = clock or SystemClock()
        # The newest `limit` start times; a new start is allowed once the oldest of them has
        # left the window. That is exactly the condition for "<= limit in every window".
        self._starts: deque[float] = deque(maxlen=limit)
        self._lock: anyio.Lock | None = None
        self._waiting = 0

    async def acquire(self) -> float:
        """Wait until a start is allowed, record it, and return its (monotonic) time."""
        if self._lock is None:
            self._lock = anyio.Lock()  # created lazily: it needs a running event loop
        self._waiting += 1
        try:
            async with self._lock:  # FIFO: the longest waiter goes first
                while True:
                    now = self._clock.monotonic()
                    allowed_at = self.next_allowed(now)
                    if allowed_at <= now:
                        self._starts.append(now)
                        return now
                    await self._clock.sleep_until(allowed_at)
        finally:
            self._waiting -= 1

    def next_allowed(self, now: float) -> float:
        """The earliest time at or after ``now`` when a start is allowed."""
        if len(self._starts) < self.limit:
            return now
        return max(now, self._starts[0] + self.window)

    def starts_in_window(self, now: float | None = None) -> int:
        """How many starts lie in the window ending at ``now``."""
        now = self._clock.monotonic() if now is None else now
        return sum(1 for t in self._starts if t > now - self.window)

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(self.limit, self.window, self.starts_in_window(), self._waiting)

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"SlidingWindowLimiter(limit={self.limit}, window={self.window}, "
            f"in_window={stats.starts_in_window}, waiting={stats.waiting})"
        )
