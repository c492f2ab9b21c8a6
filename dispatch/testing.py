"""Test doubles shipped with the library, for your tests as much as ours.

* :class:`ManualClock` replaces time: it moves only when a test calls
  :meth:`ManualClock.advance`, so tests order events without sleeping.
* :class:`ScriptedAgent` sits at the agent seam and does, per destination number, what the
  test's script says; it records every dial and checks that no number is in two calls at once.
* :class:`FakePinecall` (with :class:`Answer`) is a real WebSocket server speaking the Pinecall
  socket protocol, for testing :class:`~dispatch.agents.pinecall.PinecallAgent` setups; it is
  loaded on first use (it needs ``websockets``).
* :class:`AgentContract` and :class:`StrategyContract` are the contract suites of the seams:
  subclass one in a test module to run it against your own agent or strategy (see
  :mod:`dispatch.contracts`). They are loaded on first use (they need ``pytest``).
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .abc import Agent, AgentContext, Call, CallEnd, DialRequest
from .clock import Signal
from .errors import DialInterrupted, DialRejected, DialUnknown

__all__ = [
    "AgentContract",
    "Answer",
    "FakePinecall",
    "ManualClock",
    "Received",
    "Refusal",
    "ScriptedAgent",
    "ScriptedCall",
    "Signal",
    "StrategyContract",
    "ToolCall",
    "max_in_any_window",
    "wait_all_tasks_blocked",
]

if TYPE_CHECKING:
    from .contracts import AgentContract, StrategyContract
    from .pinecall_fake import Answer, FakePinecall, Received, Refusal, ToolCall

# Loaded on first use: the fake needs websockets and the suites pytest, and a user of
# ManualClock may have neither.
_FAKE_PINECALL = ("Answer", "FakePinecall", "Received", "Refusal", "ToolCall")
_CONTRACTS = ("AgentContract", "StrategyContract")


def __getattr__(name: str) -> Any:
    if name in _FAKE_PINECALL:
        from . import pinecall_fake

        return getattr(pinecall_fake, name)
    if name in _CONTRACTS:
        from . import contracts

        return getattr(contracts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def wait_all_tasks_blocked() -> None:
    """Return once every other task of the event loop is blocked (see
    :meth:`ManualClock.wait_all_tasks_blocked`)."""
    try:
        this = asyncio.current_task()
    except RuntimeError:  # not asyncio: trio's own primitive (anyio passes it through)
        await anyio.wait_all_tasks_blocked()
        return
    for _ in range(100_000):
        await asyncio.sleep(0)
        if all(task is this or _blocked(task) for task in asyncio.all_tasks()):
            return
    raise RuntimeError("some task never blocks (a busy loop?)")


def _blocked(task: asyncio.Task[Any]) -> bool:
    # A task waits on `_fut_waiter`; a done one means its wake-up is already scheduled.
    waiter = getattr(task, "_fut_waiter", None)
    return waiter is not None and not waiter.done()


def max_in_any_window(starts: Iterable[float], window: float) -> int:
    """The most dial starts found in any half-open interval ``[t, t + window)``: what
    ``max_calls_per_minute`` promises never exceeds the limit."""
    ordered = sorted(starts)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        while j < len(ordered) and ordered[j] < t + window:
            j += 1
        best = max(best, j - i)
    return best


class ManualClock:
    """A :class:`~dispatch.clock.Clock` that stands still until told to move."""

    def __init__(self, start: float = 0.0, wall: datetime | None = None) -> None:
        self._start = self._now = start
        self._wall = wall or datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        self._signal = Signal()

    def monotonic(self) -> float:
        return self._now

    def now(self) -> datetime:
        return self._wall + timedelta(seconds=self._now - self._start)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        entry = (deadline, next(self._seq), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        self._notify()
        try:
            await entry[2].wait()
        finally:
            if entry in self._sleepers:  # cancelled before its time
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
                self._notify()

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()
        self._notify()

    def advance_to_next(self) -> float:
        """Jump to the earliest sleeper's deadline; return the new time."""
        deadline = self.next_deadline
        if deadline is None:
            raise RuntimeError("nobody is sleeping on this clock")
        self.advance(max(0.0, deadline - self._now))
        return self._now

    async def autojump(self) -> None:
        """Run forever, jumping time to the earliest deadline as soon as anybody sleeps.

        Start it in a task group and cancel it when the work under test is done. Time jumps
        without waiting for other (non-sleeping) tasks, so use it where only the order of
        deadlines matters, such as a limiter under constant demand.
        """
        while True:
            await self.wait_for_sleepers(1)
            self.advance_to_next()

    @property
    def next_deadline(self) -> float | None:
        return self._sleepers[0][0] if self._sleepers else None

    @property
    def deadlines(self) -> list[float]:
        """Every sleeper's deadline, earliest first."""
        return sorted(entry[0] for entry in self._sleepers)

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` tasks are sleeping on this clock."""
        await self.wait_until(lambda: len(self._sleepers) >= count)

    async def wait_for_deadline(self, deadline: float) -> None:
        """Return once some task sleeps until ``deadline`` (e.g. the poll loop's next poll at
        ``clock.monotonic() + poll_interval``)."""
        await self.wait_until(lambda: deadline in self.deadlines)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked whenever sleepers come or go
        (e.g. ``lambda: clock.deadlines == [10.0]``)."""
        await self._signal.wait_until(predicate)

    async def wait_all_tasks_blocked(self) -> None:
        """Return once every other task is blocked: waiting for an event, a lock, a sleep on
        this clock, a socket or a worker thread, with nothing left to run.

        The primitive that makes "nothing happened yet" an assertion that can fail: after
        ``clock.advance(29)``, ``await clock.wait_all_tasks_blocked()`` lets every task the
        advance woke run as far as it can, so a record dialed too early is seen dialed. Like
        trio's ``wait_all_tasks_blocked``, a task waiting for a worker thread (a database
        driver's, say) counts as blocked: assert on what the hub decides in the event loop
        (``hub.statistics()``, the queue, the clock's deadlines), not on the result of I/O
        still under way.
        """
        await wait_all_tasks_blocked()

    def _notify(self) -> None:
        self._signal.notify()

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now}, sleepers={len(self._sleepers)})"


REJECTIONS = frozenset({"busy", "no_answer", "failed", "canceled"})


class ScriptedCall(Call):
    """A connected call of a :class:`ScriptedAgent`; it ends when the test (or ``auto_end``)
    ends it."""

    def __init__(self, call_id: str, request: DialRequest, agent: ScriptedAgent) -> None:
        self.id = call_id
        self.request = request
        self._agent = agent
        self._ended = anyio.Event()
        self._end: CallEnd | BaseException = CallEnd("hangup", 0.0)

    def end(self, reason: str | CallEnd = "hangup", duration: float = 1.0) -> None:
        """End the call with ``reason`` and ``duration``, or with a whole :class:`CallEnd`
        (results, transcript)."""
        self._finish(reason if isinstance(reason, CallEnd) else CallEnd(reason, duration))

    def drop(self, error: BaseException) -> None:
        """End the wait with ``error`` (e.g. ``DialUnknown("disconnected")``)."""
        self._finish(error)

    def _finish(self, end: CallEnd | BaseException) -> None:
        self._end = end
        self._ended.set()
        self._agent._hang_up(self)

    async def wait(self) -> CallEnd:
        try:
            await self._ended.wait()
        finally:
            self._agent._hang_up(self)
        if isinstance(self._end, BaseException):
            raise self._end
        return self._end


class ScriptedAgent(Agent):
    """An agent whose every dial does what the script says for its destination number.

    ``script`` maps a number to the outcomes of its successive dials; numbers not in it (and
    dials past the end of their list) get ``default``. Outcomes: ``"answer"``, ``"busy"``,
    ``"no_answer"``, ``"failed"``, ``"canceled"`` (rejections), ``"interrupted"`` (raises
    :class:`DialInterrupted`: the connection dropped), ``"unknown"`` (raises
    :class:`DialUnknown`) and ``"error"`` (raises ``RuntimeError``, an agent bug). A
    :class:`~dispatch.abc.CallEnd` is an answered call that ends that way (with its results).

    Answered calls end at once when ``auto_end`` is true, else when the test calls
    :meth:`ScriptedCall.end` (find them in :attr:`live`). ``on_dial`` runs inside every dial,
    before the outcome, and may be async: a test can inspect the store there.
    """

    def __init__(
        self,
        script: Mapping[str, Iterable[str | CallEnd]] | None = None,
        *,
        default: str = "answer",
        auto_end: bool = True,
        on_dial: Callable[[DialRequest], Awaitable[None] | None] | None = None,
    ) -> None:
        self._script = {phone: deque(outcomes) for phone, outcomes in (script or {}).items()}
        self.default = default
        self.auto_end = auto_end
        self.on_dial = on_dial
        self.dials: list[DialRequest] = []
        self.live: dict[str, ScriptedCall] = {}
        self.busy_phones: Counter[str] = Counter()
        self.max_active = 0
        self.overlaps: list[str] = []  # numbers seen in two calls at once (must stay empty)
        self.opened = self.closed = False
        self._ids = itertools.count(1)
        self._signal = Signal()

    async def open(self, context: AgentContext | None = None) -> None:
        await super().open(context)
        self.opened = True

    async def aclose(self) -> None:
        self.closed = True

    async def dial(self, request: DialRequest) -> Call:
        if self.busy_phones[request.to]:
            self.overlaps.append(request.to)
        self.busy_phones[request.to] += 1
        self.max_active = max(self.max_active, sum(self.busy_phones.values()))
        self.dials.append(request)
        self._signal.notify()
        try:
            if self.on_dial is not None:
                result = self.on_dial(request)
                if inspect.isawaitable(result):
                    await result
            queue = self._script.get(request.to)
            outcome = queue.popleft() if queue else self.default
            await anyio.lowlevel.checkpoint()
            ending = outcome if isinstance(outcome, CallEnd) else None
            if ending is not None:
                outcome = "answer"
            if outcome in REJECTIONS:
                raise DialRejected(outcome)
            if outcome == "interrupted":
                raise DialInterrupted("connection lost")
            if outcome == "unknown":
                raise DialUnknown("no answer from the platform")
            if outcome == "error":
                raise RuntimeError("scripted agent failure")
            if outcome != "answer":
                raise ValueError(f"unknown scripted outcome {outcome!r}")
        except BaseException:
            self._release(request.to)
            raise
        call = ScriptedCall(f"call-{next(self._ids)}", request, self)
        self.live[call.id] = call
        self._signal.notify()
        if self.auto_end:
            call.end(ending or "hangup")
        return call

    def dials_to(self, phone: str) -> int:
        return sum(1 for d in self.dials if d.to == phone)

    async def wait_for_dials(self, count: int) -> None:
        await self._signal.wait_until(lambda: len(self.dials) >= count)

    async def wait_for_live(self, count: int) -> None:
        await self._signal.wait_until(lambda: len(self.live) >= count)

    def _hang_up(self, call: ScriptedCall) -> None:
        if self.live.pop(call.id, None) is not None:
            self._release(call.request.to)

    def _release(self, phone: str) -> None:
        self.busy_phones[phone] -= 1
        if not self.busy_phones[phone]:
            del self.busy_phones[phone]
        self._signal.notify()
