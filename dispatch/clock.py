"""Time, injected: the hub, the limiter and the simulated agent read time only through a Clock.

Production uses :class:`SystemClock`; tests use :class:`dispatch.testing.ManualClock`, which
moves only when the test says so, so no test sleeps to order events.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["Clock", "SystemClock"]  # and the internal helpers Signal, wait_for, in_loop


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


async def wait_for(event: anyio.Event, deadline: float | None, clock: Clock) -> bool:
    """Wait until ``event`` is set or ``clock`` reaches monotonic ``deadline`` (None: no
    deadline), whichever comes first; return whether the event was set. Cancellable.

    The one place that races an event against a deadline, so every such wait follows the
    injected clock (a test's ManualClock moves it) and none polls.
    """
    if event.is_set():
        return True
    if deadline is None:
        await event.wait()
        return True
    if deadline <= clock.monotonic():
        await anyio.lowlevel.checkpoint()  # a caller looping on this still yields
        return False
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep_until(deadline)
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        await event.wait()
        tg.cancel_scope.cancel()
    return event.is_set()


class Signal:
    """Lets a task (a test, a health check) wait until a condition on some state becomes
    true, without polling: the owner of the state calls :meth:`notify` after every change."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()


def in_loop(function: Callable[[], None]) -> Callable[[], None]:
    """``function`` (which touches the event loop's state: events, queues), made safe to call
    from any thread: from another one (a sync callback runs in a worker thread) it runs on the
    loop it was made in, waiting for it. Call this from that loop."""
    token = anyio.lowlevel.current_token()

    def call() -> None:
        try:
            here = anyio.lowlevel.current_token()
        except RuntimeError:  # no event loop in this thread
            here = None
        if here == token:
            function()
        else:
            anyio.from_thread.run_sync(function, token=token)

    return call
