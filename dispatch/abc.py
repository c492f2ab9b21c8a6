"""The extension points: every seam a user may implement, with its contract.

* :class:`Strategy` -- where records come from and where outcomes go back to.
* :class:`Agent` and :class:`Call` -- what places a call and reports its end.

Callbacks and ``poll`` may be plain or ``async`` functions; the hub awaits what needs awaiting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .record import Record

__all__ = ["Agent", "Call", "CallEnd", "CallbackResult", "DialRequest", "PollResult", "Strategy"]

PollResult: TypeAlias = Awaitable[Iterable[Record]] | AsyncIterator[Record]
CallbackResult: TypeAlias = Awaitable[None] | None


class Strategy(ABC):
    """A source of records and the receiver of their outcomes.

    Subclass it and implement :meth:`poll`. The four callbacks are no-ops by default; override
    them in a subclass or assign a function on an instance (``csv.on_completed = fn``), sync or
    async either way. Callbacks run outside the dialing path: a slow or raising callback is
    logged and never blocks or stops dialing. They are delivered at least once; write them to be
    idempotent.
    """

    name: str

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__

    @abstractmethod
    def poll(self) -> PollResult:
        """Return the records that are currently due, as ``async def poll()`` returning an
        iterable, or as an async generator.

        Called every ``poll_interval`` seconds and never concurrently with itself. Return every
        record you still want called, including ones returned before: the hub deduplicates by
        ``Record.id``, and a record that reached a terminal state is never dialed again. An
        exception is logged with the strategy name and the hub polls again next interval.
        """

    async def open(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Acquire resources (connections, file handles) before the first poll."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release resources; called once when the hub stops, even after an error."""

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


class Agent(ABC):
    """Places calls. One agent object serves every strategy of a hub, concurrently."""

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
