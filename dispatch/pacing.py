"""Pacing: an exact sliding-window limit on dial starts.

``SlidingWindowLimiter(limit=N, window=60)`` promises that no half-open interval of ``window``
seconds ever holds more than ``N`` dial starts, retries included, whatever the history (a leaky
bucket such as aiolimiter admits up to 2N-1 in one window after an idle period). Waiters are
served first come, first served, and each sleeps until the exact moment a start becomes
allowed: there is no polling.

A start is taken in two steps, because a dial may only start once its intent is committed:
:meth:`~SlidingWindowLimiter.acquire` waits for room and reserves it; then
:meth:`~SlidingWindowLimiter.start` stamps the start at the moment the intent is committed
(later than the reservation, never earlier, so every window stays within the limit), or
:meth:`~SlidingWindowLimiter.cancel` gives the room back if nothing was dialed. :meth:`seed`
loads the starts of a previous process, so that a daemon restarting in a loop still never
exceeds ``N`` in any window. :meth:`~SlidingWindowLimiter.reconfigure` changes the limit of a
running limiter (a reload), keeping the starts it counted.

:class:`Slots` is the concurrency cap: a semaphore whose size a reload may change while calls
hold it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from .clock import Clock, SystemClock, wait_for

__all__ = ["LimiterStatistics", "Reservation", "SlidingWindowLimiter", "Slots"]


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    limit: int
    window: float
    starts_in_window: int
    waiting: int


@dataclass(eq=False, slots=True)
class Reservation:
    """Room for one dial start, taken by :meth:`SlidingWindowLimiter.acquire`."""

    at: float  # monotonic time the start is counted at (the reservation's, until started)
    done: bool = False


class SlidingWindowLimiter:
    """At most ``limit`` starts in any ``window`` seconds (half-open intervals)."""

    def __init__(self, limit: int, window: float = 60.0, *, clock: Clock | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.limit = limit
        self.window = window
        self._clock = clock or SystemClock()
        # The starts (and reservations) of the last window, oldest first. A new one is allowed
        # at `now` while fewer than `limit` lie in (now - window, now]. Every entry is added at
        # the current time (or after the newest), so the newest is always last, and moving a
        # reservation to a later time is a removal plus an addition: the invariant holds
        # through both.
        self._starts: deque[float] = deque()
        self._lock: anyio.Lock | None = None
        self._waiting = 0
        self._changed: anyio.Event | None = None  # set when the limit changes

    def reconfigure(self, limit: int, window: float) -> None:
        """Allow ``limit`` starts per ``window`` from now on. The starts already counted stay
        counted, so the new limit holds in every window that overlaps the change too, and a
        waiter sleeping for the old limit's next opening is woken to look again."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.limit, self.window = limit, window
        if self._changed is not None:
            self._changed.set()

    def reseed(self, starts: Iterable[float]) -> None:
        """Count exactly these (monotonic) start times: the ledger's, read anew after the
        limiter was off for a while. A reservation not yet started may be forgotten by this;
        :meth:`start` then checks the limit again before counting it."""
        self._starts.clear()
        self.seed(starts)

    def seed(self, starts: Iterable[float]) -> None:
        """Count these (monotonic) start times, e.g. a previous process's, as starts."""
        merged = sorted([*self._starts, *starts])
        self._starts = deque(merged)
        self._prune(self._clock.monotonic())

    async def acquire(self) -> Reservation:
        """Wait until a start is allowed and reserve it (FIFO among waiters)."""
        if self._lock is None:
            self._lock = anyio.Lock()  # created lazily: it needs a running event loop
        self._waiting += 1
        try:
            async with self._lock:  # FIFO: the longest waiter goes first
                while True:
                    now = self._clock.monotonic()
                    allowed_at = self.next_allowed(now)
                    if allowed_at <= now:
                        return Reservation(self._add(now))
                    self._changed = changed = anyio.Event()
                    await wait_for(changed, allowed_at, self._clock)
                    self._changed = None
        finally:
            self._waiting -= 1

    async def start(self, reservation: Reservation) -> float:
        """The dial starts now: move the reservation to the current time and return it.

        Normally immediate. If the wait between the reservation and now let other starts in
        (an intent that took long to commit), this waits until the start is allowed again.
        """
        self._take_back(reservation)
        now = self._clock.monotonic()
        at = self._add(now) if self.next_allowed(now) <= now else (await self.acquire()).at
        reservation.at, reservation.done = at, True
        return at

    def cancel(self, reservation: Reservation) -> None:
        """Nothing was dialed after all: give the room back."""
        self._take_back(reservation)
        reservation.done = True

    def _take_back(self, reservation: Reservation) -> None:
        if reservation.done:
            raise RuntimeError("this reservation was already started or cancelled")
        with contextlib.suppress(ValueError):  # already out of the window
            self._starts.remove(reservation.at)

    def _add(self, now: float) -> float:
        # Seeded starts may lie a little ahead of now (see DispatchHub's seeding): a start is
        # never counted before the newest one, which only ever counts it later (safe).
        at = max(now, self._starts[-1]) if self._starts else now
        self._starts.append(at)
        return at

    def next_allowed(self, now: float) -> float:
        """The earliest time at or after ``now`` when a start is allowed."""
        self._prune(now)
        if len(self._starts) < self.limit:
            return now
        return max(now, self._starts[-self.limit] + self.window)

    def starts_in_window(self, now: float | None = None) -> int:
        """How many starts (and reservations) lie in the window ending at ``now``."""
        now = self._clock.monotonic() if now is None else now
        return sum(1 for t in self._starts if t > now - self.window)

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        starts = self._starts
        while starts and starts[0] <= horizon:
            starts.popleft()

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(self.limit, self.window, self.starts_in_window(), self._waiting)

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"SlidingWindowLimiter(limit={self.limit}, window={self.window}, "
            f"in_window={stats.starts_in_window}, waiting={stats.waiting})"
        )


class Slots:
    """At most ``total`` holders at once: the concurrency cap on calls in flight.

    Acquired by the dispatch loop and released by the call's task when it ends, like a
    semaphore; unlike anyio's, :meth:`resize` may change ``total`` while slots are held (a
    reload). Lowered below the number held, no slot is given out until enough are released.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"total must be at least 1, got {total}")
        self.total = total
        self.held = 0
        self._freed: anyio.Event | None = None

    async def acquire(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        while self.held >= self.total:
            if self._freed is None:
                self._freed = anyio.Event()
            await self._freed.wait()
        self.held += 1

    def release(self) -> None:
        if self.held <= 0:
            raise RuntimeError("release() without a slot held")
        self.held -= 1
        self._wake()

    def resize(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"total must be at least 1, got {total}")
        self.total = total
        self._wake()

    def _wake(self) -> None:
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    def __repr__(self) -> str:
        return f"Slots(total={self.total}, held={self.held})"
