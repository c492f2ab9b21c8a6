"""The extension points: every seam a user may implement, with its contract.

* :class:`Strategy` -- where records come from and where outcomes go back to.
* :class:`Agent` and :class:`Call` -- what places a call and reports its end.

Callbacks and ``poll`` may be plain or ``async`` functions; the hub awaits what needs awaiting.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

from .record import Record

__all__ = [
    "Agent",
    "Call",
    "CallEnd",
    "CallbackName",
    "CallbackResult",
    "DialRequest",
    "LateOutcome",
    "Malformed",
    "PollItem",
    "PollResult",
    "Removed",
    "Strategy",
]


@dataclass(frozen=True, slots=True)
class Removed:
    """Yielded by an incremental strategy's ``poll``: record ``id`` left the source.

    If it is still queued (not yet dialed) it is dropped from the queue; a record already in a
    call or finished is unaffected. Yielding it for an unknown id is harmless.
    """

    id: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """Yielded by ``poll`` for source data that cannot become a record (a bad CSV row).

    The hub records it as skipped with reason ``malformed`` (visible in ``dispatch status``)
    and calls ``on_skipped`` with a record holding ``id``, ``phone`` (as found, maybe empty)
    and ``metadata={"line": line, "error": detail}``. ``id`` should be stable for the same bad
    data (a CSV uses the row's id, or ``line:N`` when it has none).
    """

    id: str
    detail: str
    phone: str = ""
    line: int | None = None

    def record(self) -> Record:
        metadata: dict[str, Any] = {"error": self.detail}
        if self.line is not None:
            metadata["line"] = self.line
        return Record(id=self.id, phone=self.phone, metadata=metadata)


PollItem: TypeAlias = Record | Removed | Malformed
PollResult: TypeAlias = Awaitable[Iterable[PollItem]] | AsyncIterator[PollItem]
CallbackResult: TypeAlias = Awaitable[None] | None
CallbackName: TypeAlias = Literal["on_dispatched", "on_completed", "on_failed", "on_skipped"]


class Strategy(ABC):
    """A source of records and the receiver of their outcomes.

    Subclass it and implement :meth:`poll`. The four callbacks are no-ops by default; override
    them in a subclass or assign a function on an instance (``csv.on_completed = fn``), sync or
    async either way. Callbacks run outside the dialing path: a slow or raising callback is
    logged and never blocks or stops dialing. They are delivered at least once; write them to be
    idempotent. Callbacks of one record run in the order of its events; callbacks of different
    records may run concurrently (up to 16 at a time).
    """

    name: str

    _poll_requested: Callable[[], None] | None = None  # installed by the hub while it runs

    incremental: ClassVar[bool] = False
    """False: every poll returns every record still wanted (the hub ignores repeats of queued
    records). True: a poll yields only what changed since the previous one, so a record
    yielded again replaces the queued version if it is not dialed yet (a fixed phone is used),
    a record skipped for its content (``invalid_phone``, ``malformed``) is looked at again, and
    :class:`Removed` drops a queued record."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__

    @abstractmethod
    def poll(self) -> PollResult:
        """Return the records that are currently due, as ``async def poll()`` returning an
        iterable, or as an async generator.

        Called every ``poll_interval`` seconds (sooner after :meth:`poll_now`) and never
        concurrently with itself. Return every record you still want called, including ones
        returned before: the hub deduplicates by ``Record.id``, and a record that reached a
        terminal state is never dialed again (an :attr:`incremental` strategy returns only what
        changed instead). Items may also be :class:`Malformed` (bad source data, recorded as
        skipped) and, for incremental strategies, :class:`Removed`. An exception is logged with
        the strategy name and the hub polls again next interval.
        """

    async def open(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Acquire resources (connections, file handles) before the first poll."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release resources; called once when the hub stops, even after an error."""

    async def watch(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Optional: watch the source and call :meth:`poll_now` when it changes.

        The hub runs it in the background from start to stop and cancels it on stop. If it
        returns or raises, the strategy is still polled every ``poll_interval``: watching only
        makes changes arrive sooner.
        """

    def poll_now(self) -> None:
        """Ask the hub to poll this strategy as soon as possible (without waiting for the next
        ``poll_interval``). Safe to call at any time, from the hub's event loop; calls made
        while a poll runs lead to one more poll after it."""
        if self._poll_requested is not None:
            self._poll_requested()

    async def deliver(self, callback: CallbackName, record: Record, *args: str) -> None:
        """How the hub hands an outcome to this strategy: calls the named callback (looked up
        at delivery time, so ``strategy.on_completed = fn`` works).

        Override it for work that must happen whatever callbacks a user assigns (the CSV
        write-back does), and call ``super().deliver(...)``. An exception makes the hub
        retry the delivery later.
        """
        result = getattr(self, callback)(record, *args)
        if inspect.isawaitable(result):
            await result

    def on_dispatched(self, record: Record, call_id: str) -> CallbackResult:
        """The platform accepted the dial of ``record`` and named the call ``call_id``."""
        return None

    def on_completed(self, record: Record, call_id: str, reason: str) -> CallbackResult:
        """The call connected and ended; ``reason`` is the platform's (``hangup``, ...)."""
        return None

    def on_failed(self, record: Record, error: str) -> CallbackResult:
        """The record failed for good: its last allowed attempt was rejected (``busy``,
        ``no_answer``, ``failed`` ...), or its outcome is unknown (``unknown: ...``)."""
        return None

    def on_skipped(self, record: Record, reason: str) -> CallbackResult:
        """Admission refused the record (``invalid_phone``, ``expired`` ...); never dialed."""
        return None


@dataclass(frozen=True, slots=True)
class DialRequest:
    """What the hub asks an agent to dial. ``dispatch_id`` identifies this attempt uniquely; an
    agent should carry it to the platform (e.g. in metadata) to correlate the call it gets back.
    """

    to: str
    dispatch_id: str
    from_: str | None = None
    greeting: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    prompt_vars: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a connected call ended: the platform's ``reason`` and the duration in seconds."""

    reason: str
    duration: float | None = None


class Call(ABC):
    """A call the platform accepted. ``id`` is the platform's call id."""

    id: str

    @abstractmethod
    async def wait(self) -> CallEnd:
        """Return once the call has ended.

        Raise :class:`~dispatch.errors.DialRejected` if it turns out the call never connected
        (no answer, busy), or :class:`~dispatch.errors.DialUnknown` if its end can no longer be
        known (connection lost). Cancellation abandons the wait, not the call.
        """


@dataclass(frozen=True, slots=True)
class LateOutcome:
    """What the platform reported for a dial after ``dial()`` had given up on it (raised
    :class:`~dispatch.errors.DialUnknown`): ``started`` once it was answered, ``reason`` and
    ``duration`` once it ended."""

    dispatch_id: str
    call_id: str | None
    started: bool
    reason: str | None = None
    duration: float | None = None


class Agent(ABC):
    """Places calls. One agent object serves every strategy of a hub, concurrently."""

    _late_reported: Callable[[LateOutcome], None] | None = None  # installed by the hub

    def report_late(self, outcome: LateOutcome) -> None:
        """Hand the hub a late outcome of a dial whose ``dial()`` raised ``DialUnknown``: the
        hub records it in the ledger (an answered call becomes ``completed`` and
        ``on_completed`` is delivered). The dial is never retried either way."""
        if self._late_reported is not None:
            self._late_reported(outcome)

    @abstractmethod
    async def dial(self, request: DialRequest) -> Call:
        """Place one call and return it once the platform has accepted it.

        Must be safe to call concurrently, and must return the call of THIS request, never
        another dial's. Raise :class:`~dispatch.errors.DialRejected` when the platform refused
        or the call did not connect, :class:`~dispatch.errors.DialUnknown` when the outcome is
        unknown (timeout, connection lost): the hub retries the first, never the second.
        Must not queue the dial for a later reconnect.
        """

    async def open(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Connect and register; the hub calls it once before the first dial."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Disconnect; called once when the hub stops."""
