"""Test helpers: a strategy over an in-memory list that records every callback it receives."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio.from_thread

from dispatch import (
    Agent,
    Backoff,
    CallResult,
    Clock,
    DispatchHub,
    Heartbeat,
    Record,
    Store,
    Strategy,
)
from dispatch.testing import ManualClock, Signal

# Far out of the way of what the tests do with their clocks (its sleep is one sleeper more).
QUIET_HEARTBEAT = Heartbeat(interval=10_000.0, timeout=20_000.0)


class ListStrategy(Strategy):
    """Yields ``records`` on every poll; records callbacks as ``(name, record id, *args)``."""

    def __init__(self, records: Iterable[Record] = (), name: str = "list") -> None:
        super().__init__(name)
        self.records = list(records)
        self.events: list[tuple[Any, ...]] = []
        self.polls = 0
        self.fail_polls = 0  # the next N polls raise
        self.signal = Signal()

    async def poll(self) -> list[Record]:
        self.polls += 1
        self.signal.notify()
        if self.fail_polls:
            self.fail_polls -= 1
            raise ConnectionError("source unreachable")
        return list(self.records)

    def on_dispatched(self, record: Record, call_id: str) -> None:
        self._event("dispatched", record, call_id)

    def on_result(self, record: Record, call_id: str, result: CallResult) -> None:
        self._event("result", record, call_id, result.tool, dict(result.arguments))

    async def on_completed(self, record: Record, call_id: str, reason: str) -> None:
        self._event("completed", record, call_id, reason)

    def on_failed(self, record: Record, error: str) -> None:
        self._event("failed", record, error)

    def on_skipped(self, record: Record, reason: str) -> None:
        self._event("skipped", record, reason)

    def _event(self, name: str, record: Record, *args: Any) -> None:
        self.events.append((name, record.id, *args))
        notify_from_anywhere(self.signal)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]

    async def wait_for_polls(self, count: int) -> None:
        await self.signal.wait_until(lambda: self.polls >= count)

    async def wait_for_events(self, count: int) -> None:
        await self.signal.wait_until(lambda: len(self.events) >= count)


def store_for(url: str, clock: Clock, **options: Any) -> Store:
    """A store on ``clock`` whose heartbeat stays out of the way and whose outage retries are
    quick."""
    options.setdefault("heartbeat", QUIET_HEARTBEAT)
    options.setdefault("retry", Backoff(initial=0.05, maximum=0.2))
    return Store(url, clock=clock, **options)


def hub_for(url: str, agent: Agent, *sources: Strategy, **options: Any) -> DispatchHub:
    """A hub over ``sources`` on a manual clock (``clock=`` to share one), polling every 5 s."""
    clock = options.pop("clock", None) or ManualClock()
    options.setdefault("poll_interval", 5.0)
    return DispatchHub(
        agent=agent, strategies=list(sources), store=store_for(url, clock), clock=clock, **options
    )


def notify_from_anywhere(signal: Signal) -> None:
    """``signal.notify()``, from the event loop or from a worker thread (sync callbacks run in
    one): anyio events are not thread-safe."""
    try:
        anyio.from_thread.run_sync(signal.notify)
    except RuntimeError:  # not in a worker thread: on the event loop already
        signal.notify()


def rec(record_id: str, phone: str, **fields: Any) -> Record:
    return Record(id=record_id, phone=phone, **fields)


PHONES = [f"+1415555{2600 + n:04d}" for n in range(100)]
