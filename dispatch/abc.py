"""The extension points: every seam a user may implement, with its contract.

* :class:`Strategy` -- where records come from and where outcomes go back to.
* :class:`Agent` and :class:`Call` -- what places a call and reports its end.

The hub hands each its collaborators explicitly when it opens it (:class:`StrategyContext`,
:class:`AgentContext`); it never writes into the objects it is given, so a wrapping or proxy
object works as long as it passes the context on.

Callbacks may be plain or ``async`` functions: a plain one runs in a worker thread, never on
the event loop, so it may block without delaying a dial.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

import anyio.to_thread

from .record import Record

if TYPE_CHECKING:
    from .results import ResultAction
    from .rules.gate import CallingRules

__all__ = [
    "Agent",
    "AgentContext",
    "Call",
    "CallEnd",
    "CallResult",
    "CallbackName",
    "CallbackResult",
    "DialRequest",
    "LateOutcome",
    "Malformed",
    "PollItem",
    "PollResult",
    "Removed",
    "Strategy",
    "StrategyContext",
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
CallbackName: TypeAlias = Literal[
    "on_dispatched", "on_result", "on_completed", "on_failed", "on_skipped"
]


@dataclass(frozen=True, slots=True)
class StrategyContext:
    """What the hub hands a strategy in :meth:`Strategy.open`.

    ``poll_now()`` asks the hub for an immediate poll of this strategy (safe at any time from
    the hub's event loop).
    """

    poll_now: Callable[[], None]


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What the hub hands an agent in :meth:`Agent.open`.

    ``report_late(outcome)`` gives the hub what the platform said about a dial after
    ``dial()`` gave up on it (see :meth:`Agent.report_late`).
    """

    report_late: Callable[[LateOutcome], None]


class Strategy(ABC):
    """A source of records and the receiver of their outcomes.

    Subclass it and implement :meth:`poll`. The five callbacks are no-ops by default; override
    them in a subclass or assign a function on an instance (``csv.on_completed = fn``), sync or
    async either way. Callbacks run outside the dialing path (a sync one in a worker thread):
    a slow, blocking or raising callback is logged and never blocks or stops dialing. They are
    delivered at least once; write them to be idempotent. Callbacks of one record run in the
    order of its events; callbacks of different records may run concurrently (up to 16 at a
    time, so sync callbacks that share state need a lock).
    """

    name: str

    _context: StrategyContext | None = None  # kept by open(); see StrategyContext

    incremental: ClassVar[bool] = False
    """False: every poll returns every record still wanted (the hub ignores repeats of queued
    records). True: a poll yields only what changed since the previous one, so a record
    yielded again replaces the queued version if it is not dialed yet (a fixed phone is used),
    a record skipped for its content (``invalid_phone``, ``malformed``) is looked at again, and
    :class:`Removed` drops a queued record."""

    result_actions: Sequence[ResultAction] = ()
    """What the callee's answers drive (:class:`~dispatch.results.ResultAction`): the first
    rule a result matches decides, e.g. an ``opt_out`` status adds the number to the
    do-not-call list, a ``reschedule`` with a time calls back then. Default: nothing more."""

    calling_rules: CallingRules | None = None
    """When this strategy's records may be dialed (:class:`~dispatch.rules.gate.CallingRules`:
    a rule pack of calling hours in the callee's local time, per-number caps, a campaign
    schedule). Default: whenever the hub may dial, under the hub's own caps."""

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

    async def open(self, context: StrategyContext | None = None) -> None:
        """Acquire resources (connections, file handles) before the first poll.

        The hub calls it once, with its :class:`StrategyContext`. An override must call
        ``await super().open(context)`` (or keep the context itself), or :meth:`poll_now`
        reaches nobody. ``context`` is None when a tool opens the strategy outside a hub
        (``dispatch check``)."""
        self._context = context

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
        if self._context is not None:
            self._context.poll_now()

    def listens(self, callback: CallbackName) -> bool:
        """Whether delivering ``callback`` does anything: ``deliver`` is overridden, or the
        callback is (a subclass's method, or a function assigned on the instance). The hub
        writes no outbox row for a callback nobody listens to (its webhooks still get theirs);
        the check is made as each outcome is committed, so an assignment counts from then."""
        return type(self).deliver is not Strategy.deliver or _assigned(self, callback)

    async def deliver(self, callback: CallbackName, record: Record, *args: Any) -> None:
        """How the hub hands an outcome to this strategy: calls the named callback (looked up
        at delivery time, so ``strategy.on_completed = fn`` works).

        An ``async`` callback is awaited; a plain one runs in a worker thread (the hub's
        callback timeout abandons it there if it never returns), so it may block. Override
        this for work that must happen whatever callbacks a user assigns (the CSV write-back
        does), and call ``super().deliver(...)``. An exception makes the hub retry the
        delivery later.
        """
        if not _assigned(self, callback):
            return  # the default no-op (under an overridden deliver too): not worth a thread
        function = getattr(self, callback)
        if inspect.iscoroutinefunction(function):
            await function(record, *args)
            return
        result = await anyio.to_thread.run_sync(
            lambda: function(record, *args),
            abandon_on_cancel=True,
            limiter=CALLBACK_THREADS.get(),
        )
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
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

    def on_result(self, record: Record, call_id: str, result: CallResult) -> CallbackResult:
        """The callee's answer: a result tool's call during the call ``call_id``. Delivered
        once per result, in the order they were made, before ``on_completed`` (committed in
        the same transaction as the outcome)."""
        return None

    def on_skipped(self, record: Record, reason: str) -> CallbackResult:
        """Admission refused the record (``invalid_phone``, ``expired`` ...); never dialed."""
        return None


# The worker threads plain callbacks run in, while the outbox delivers them (set in its
# task): their own, so a burst of slow callbacks never takes the threads a CSV poll or its
# write-back waits for (anyio's default limiter). None: anyio's default.
CALLBACK_THREADS: ContextVar[anyio.CapacityLimiter | None] = ContextVar(
    "callback_threads", default=None
)


def _assigned(strategy: Strategy, callback: CallbackName) -> bool:
    """Whether ``callback`` is more than the base no-op (overridden, or assigned)."""
    function = getattr(strategy, callback)
    return getattr(function, "__func__", None) is not getattr(Strategy, callback)


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
    detect_turn_end: bool | None = None  # None: the agent's default


@dataclass(frozen=True, slots=True)
class CallResult:
    """What the callee answered: one call of a result tool by the agent's model during the call
    (``confirm_appointment {"status": "confirmed"}``), with the time it was made. ``arguments``
    matched the tool's schema (an agent answers the model with an error otherwise)."""

    tool: str
    arguments: Mapping[str, Any]
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "arguments": dict(self.arguments), "at": self.at.isoformat()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallResult:
        return cls(str(data["tool"]), dict(data["arguments"]), datetime.fromisoformat(data["at"]))


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a connected call ended: the platform's ``reason``, the duration in seconds, the
    results the agent's result tools captured (in the order they were made), the transcript
    as the platform sent it (a list of messages, e.g. ``{"role": ..., "content": ...}``), and
    when the call started and ended (UTC) if the platform said."""

    reason: str
    duration: float | None = None
    results: tuple[CallResult, ...] = ()
    transcript: tuple[Mapping[str, Any], ...] = ()
    started_at: datetime | None = None
    ended_at: datetime | None = None


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
    end: CallEnd | None = None  # the whole end (results, transcript), once it ended


class Agent(ABC):
    """Places calls. One agent object serves every strategy of a hub, concurrently."""

    _context: AgentContext | None = None  # kept by open(); see AgentContext

    def report_late(self, outcome: LateOutcome) -> None:
        """Hand the hub a late outcome of a dial whose ``dial()`` raised ``DialUnknown``: the
        hub records it in the ledger (an answered call becomes ``completed`` and
        ``on_completed`` is delivered). The dial is never retried either way. Call it from
        the hub's event loop."""
        if self._context is not None:
            self._context.report_late(outcome)

    @abstractmethod
    async def dial(self, request: DialRequest) -> Call:
        """Place one call and return it once the platform has accepted it.

        Must be safe to call concurrently, and must return the call of THIS request, never
        another dial's. Raise :class:`~dispatch.errors.DialRejected` when the platform refused
        or the call did not connect, :class:`~dispatch.errors.DialUnknown` when the outcome is
        unknown (timeout, connection lost): the hub retries the first, never the second.
        Must not queue the dial for a later reconnect.
        """

    async def open(self, context: AgentContext | None = None) -> None:
        """Connect and register; the hub calls it once before the first dial, with its
        :class:`AgentContext`. An override must call ``await super().open(context)`` (or keep
        the context itself), or :meth:`report_late` reaches nobody; a wrapping agent passes
        the context on to the agent it wraps. ``context`` is None when a tool opens the agent
        outside a hub (``dispatch check``)."""
        self._context = context

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Disconnect; called once when the hub stops."""
