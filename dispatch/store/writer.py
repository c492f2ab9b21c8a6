"""The store's one writer task: group commit, and riding out outages.

Every write goes through :meth:`Writer.write`. One task commits whatever is queued in one
transaction (the intents of concurrent dials, outcomes and skips share one fsync); a caller's
``await`` returns only once the transaction holding its write has committed.

When the store cannot be reached (:class:`StoreUnavailable`), writes are treated by kind:

* a **held** write (an outcome, a skip, a callback's delivery mark: what must never be lost)
  is kept, in order, and committed again with capped backoff until the store is back. Its
  caller keeps waiting: the record's next step comes only from a committed outcome.
* a **fail-fast** write (an intent, a status snapshot) fails at once, so nothing is dialed
  without a committed intent.

An outage is logged once when it begins and once when it ends, never per row. Memory is
bounded: the queue holds at most ``queue_size`` writes and a full queue blocks its writers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from sqlalchemy import Connection, Dialect, Executable
from sqlalchemy.ext.asyncio import AsyncEngine

from ..clock import Clock, Signal, wait_for
from ..errors import StoreError, StoreUnavailable
from ..histogram import COMMIT_BUCKETS, Histogram, HistogramStatistics
from ..options import Backoff
from .errors import DRIVER_ERRORS, store_error

__all__ = ["Statements", "Writer", "WriterStatistics"]

logger = logging.getLogger(__name__)

Statements = list[tuple[Executable, dict[str, Any]]]


@dataclass(slots=True)
class _Write:
    """One logical write: statements committed atomically, and whether an outage holds it.

    No event of its own: its caller waits for the event of the round that takes it from the
    queue, shared by every write of that round. One event per commit instead of one per write
    is what lets a commit of a thousand writes wake their callers cheaply."""

    statements: Statements
    held: bool
    round: anyio.Event  # set when the round that commits it (or tries to) is over
    done: bool = False
    error: BaseException | None = None
    # For a write nobody awaits (Writer.submit): told the outcome, None once committed.
    then: Callable[[BaseException | None], None] | None = None

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            self.done = True
            self.report()

    def report(self) -> None:
        if self.then is not None:
            try:
                self.then(self.error)
            except Exception:
                logger.exception("store.write_report_failed")


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    commits: int
    writes: int
    held: int  # writes waiting for the store to come back
    unavailable_since: float | None  # monotonic time the current outage began
    failed_tries: int = 0  # tries (commits, probes) that failed in the current outage
    commit_seconds: HistogramStatistics | None = None  # how long each commit took


class Writer:
    """Commits writes in groups on ``engine()``; see the module docstring.

    ``probe()`` is how an outage with nothing held finds out that the store is back (the
    daemon's heartbeat: a real write, so a store that reads but cannot write is not taken
    for one that is back).
    """

    def __init__(
        self,
        engine: Callable[[], AsyncEngine],
        *,
        clock: Clock,
        backoff: Backoff,
        probe: Callable[[], Awaitable[object]],
        queue_size: int = 10_000,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._backoff = backoff
        self._probe_store = probe
        # The queue: appended by write(), taken whole by the task. Bounded: a full queue
        # makes write() wait for room.
        self._queue: deque[_Write] = deque()
        self._queue_size = queue_size
        self._closed = False
        self._arrived: anyio.Event | None = None  # set by write() while the task waits
        self._room: anyio.Event | None = None  # set by the task while a write() waits
        # What a queued write waits for: the event of the next round to take the queue. Each
        # round takes the current one (into _taken) and sets it once its writes are done, so
        # a write wakes once, when its own round ends, not at every round before.
        self._next = anyio.Event()
        self._taken: list[anyio.Event] = []
        self._commits = 0
        self._commit_seconds = Histogram(COMMIT_BUCKETS)
        self._rows = 0
        self._held = 0
        self._outage: StoreUnavailable | None = None
        self._outage_since: float | None = None
        self._available = anyio.Event()
        self._available.set()
        self._give_up_at: float | None = None  # the event loop's time (anyio.current_time)
        self._wake = anyio.Event()
        self._scopes: set[anyio.CancelScope] = set()  # commits and pauses: end at give-up
        self._failures = 0  # failed tries in the current outage
        self.changed = Signal()  # notified when an outage begins or ends, or holds more

    # -- for callers -------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._outage is None

    async def wait_available(self) -> None:
        """Return once writes can be committed (at once if no outage is going on)."""
        while self._outage is not None:
            await self._available.wait()

    async def write(self, statements: Statements, *, held: bool) -> None:
        """Commit ``statements`` together; return once committed.

        Raises :class:`StoreUnavailable` at once for a fail-fast write during an outage (and
        for a held one once the writer gave up, see :meth:`give_up_after`), :class:`StoreError`
        if the database refuses the write.
        """
        # A caller already cancelled writes nothing (an intent for a dial that will not
        # happen would be recovered as interrupted, and its record never dialed).
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._outage is not None and not held:
            raise _fresh(self._outage)
        while len(self._queue) >= self._queue_size and not self._closed:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        if self._closed:
            raise StoreError("the store is closed")
        write = _Write(statements, held, self._next)
        self._queue.append(write)
        if self._arrived is not None:
            self._arrived.set()
        # Once queued, a write is committed even if its caller is cancelled meanwhile. (Not
        # done when woken: held through an outage, it waits for the round that tries again.)
        while not write.done:
            await write.round.wait()
        if write.error is not None:
            # A copy for each caller: one exception raised in many tasks would collect every
            # one of their tracebacks (and keep their frames alive) for as long as it lives.
            raise _fresh(write.error)

    def submit(
        self,
        statements: Statements,
        then: Callable[[BaseException | None], None],
    ) -> None:
        """Queue ``statements`` to be committed, held through an outage, like an awaited
        :meth:`write`, in order with every other write; return at once. ``then(error)`` is
        called once the write is over: ``None`` once committed, else the error. The queue's
        bound does not apply (the caller bounds how many it submits). Raises
        :class:`StoreError` if the store is closed."""
        if self._closed:
            raise StoreError("the store is closed")
        self._queue.append(_Write(statements, True, self._next, then=then))
        if self._arrived is not None:
            self._arrived.set()

    def give_up_after(self, seconds: float) -> None:
        """``seconds`` from now on (real time), stop waiting for an unreachable store: held
        writes fail with :class:`StoreUnavailable`, and a commit the database does not answer
        is abandoned. The hub sets it when it stops, so that an outage (even one that drops
        packets) cannot keep a stopping daemon alive for ever."""
        self._give_up_at = anyio.current_time() + seconds
        for scope in self._scopes:
            scope.deadline = self._give_up_at
        self._wake.set()

    def close(self) -> None:
        """Stop accepting writes; :meth:`run` commits what is queued, then returns (waiting
        at most 10 s more for an unreachable store, unless :meth:`give_up_after` said)."""
        if self._give_up_at is None:
            self.give_up_after(10.0)
        self._closed = True
        self._wake_task()

    def dispose(self) -> None:
        """Drop the queue (after :meth:`run` returned, or if it never ran)."""
        self._closed = True
        self._wake_task()
        self._fail_queued(StoreError("the store is closed"))

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            self._commits,
            self._rows,
            self._held,
            self._outage_since,
            self._failures if self._outage is not None else 0,
            self._commit_seconds.statistics(),
        )

    # -- the task ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Commit queued writes in groups until :meth:`close`; ride out outages."""
        task_status.started()
        batch: list[_Write] = []
        try:
            while True:
                if not batch:
                    if self._outage is not None and not self._giving_up():
                        await self._until_back()  # nothing held: probe until it is back
                        continue
                    if not self._queue:
                        if self._closed:
                            return
                        self._arrived = arrived = anyio.Event()
                        await arrived.wait()
                        self._arrived = None
                        continue
                self._drain(batch)
                try:
                    await self._commit(batch)
                except StoreUnavailable as exc:
                    batch = await self._ride_out(batch, exc)
                    continue
                self._settle()
                batch = []
                if self._outage is not None:
                    self._back()
        finally:
            # Cancelled or closed: nobody may wait for ever for a write that will never
            # happen. The attempts concerned stay in flight in the store and are recovered
            # as interrupted on the next start.
            stopped = StoreError("the store writer stopped")
            for write in batch:
                write.fail(stopped)
            self._closed = True
            self._fail_queued(stopped)

    def _drain(self, batch: list[_Write]) -> None:
        """Move every queued write into ``batch`` (a round begins), and make room for more."""
        if self._queue:
            batch.extend(self._queue)
            self._queue.clear()
            self._taken.append(self._next)
            self._next = anyio.Event()
        if self._room is not None:
            self._room.set()
            self._room = None

    def _settle(self) -> None:
        """Wake the callers of the writes done (committed or failed) in the rounds taken."""
        taken, self._taken = self._taken, []
        for event in taken:
            event.set()

    def _wake_task(self) -> None:
        if self._arrived is not None:
            self._arrived.set()
        if self._room is not None:
            self._room.set()
            self._room = None

    def _fail_queued(self, error: BaseException) -> None:
        batch: list[_Write] = []
        self._drain(batch)
        for write in batch:
            write.fail(error)
        self._settle()

    async def _commit(self, batch: list[_Write]) -> None:
        """Commit ``batch`` in one transaction. A write the database refuses is failed alone
        (its neighbours are committed without it); an outage raises for the whole batch."""
        started = self._clock.monotonic()
        with self._bounded() as scope:
            try:
                async with self._engine().begin() as conn:
                    await conn.run_sync(_apply, batch)
            except DRIVER_ERRORS as exc:
                error = store_error(exc, "writing")
                if isinstance(error, StoreUnavailable):
                    raise error from exc
                if len(batch) == 1:
                    batch[0].fail(error)
                    return
                logger.warning("store.batch_failed size=%d error=%s", len(batch), error)
                for write in batch:  # one bad write must not fail its neighbours
                    await self._commit([write])
                return
        if scope.cancelled_caught:
            raise StoreUnavailable("store gave no answer before the daemon stopped")
        self._commits += 1
        self._commit_seconds.observe(self._clock.monotonic() - started)
        self._rows += len(batch)
        for write in batch:
            write.done = True
            if write.then is not None:
                write.report()

    async def _ride_out(self, batch: list[_Write], error: StoreUnavailable) -> list[_Write]:
        """An outage: fail the fail-fast writes, keep the held ones, wait, and return what to
        try again (in the order it was written)."""
        self._begin(error)
        self._failures += 1
        self._drain(batch)
        giving_up = self._giving_up()
        for write in batch:
            if not write.held or giving_up:
                write.fail(error)
        batch = [w for w in batch if not w.done]
        retry = anyio.Event()  # what the writes kept wait for from now on
        for write in batch:
            write.round = retry
        self._settle()
        self._taken.append(retry)
        self._held = len(batch)
        self.changed.notify()
        if batch:  # the next try of what is held is the probe
            await self._pause(self._backoff.delay(self._failures))
        return batch

    async def _until_back(self) -> None:
        """Nothing is held: probe the store on the backoff schedule until it answers (or the
        writer gives up or closes)."""
        while self._outage is not None and not self._giving_up():
            await self._pause(self._backoff.delay(self._failures))
            if self._giving_up():
                return
            with self._bounded():
                try:
                    await self._probe_store()
                except StoreError as exc:
                    self._failures += 1
                    self.changed.notify()
                    logger.debug("store.probe_failed %s", exc)
                    continue
            if not self._giving_up():
                self._back()

    def _begin(self, error: StoreUnavailable) -> None:
        if self._outage is not None:
            return
        self._outage = error
        self._outage_since = self._clock.monotonic()
        self._available = anyio.Event()
        self._failures = 0
        logger.error(
            "store.unavailable %s (holding outcomes until it is back; no new dials)", error
        )
        self.changed.notify()

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds on the store's clock, or until the writer gives up."""
        logger.debug("store.retry held=%d in=%.1fs", self._held, delay)
        self._wake = anyio.Event()
        with self._bounded():
            await wait_for(self._wake, self._clock.monotonic() + delay, self._clock)

    @contextmanager
    def _bounded(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that ends at the give-up time (real time), when there is one."""
        deadline = self._give_up_at if self._give_up_at is not None else math.inf
        with anyio.CancelScope(deadline=deadline) as scope:
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

    def _back(self) -> None:
        assert self._outage_since is not None
        logger.warning(
            "store.available again after %.1fs",
            self._clock.monotonic() - self._outage_since,
        )
        self._outage = None
        self._outage_since = None
        self._held = 0
        self._available.set()
        self.changed.notify()

    def _giving_up(self) -> bool:
        return self._give_up_at is not None and anyio.current_time() >= self._give_up_at


def _fresh(error: BaseException) -> BaseException:
    """A new exception like ``error``, with the same cause, and a traceback of its own."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


def _apply(conn: Connection, batch: Sequence[_Write]) -> None:
    # Group rows by statement, in order of first appearance. Safe because a batch never holds
    # two writes for one attempt or one record that depend on their order: each write of an
    # attempt waits for the commit of the previous one, a record has at most one attempt in
    # flight, and the one write not awaited (a call's id, Store.activated) changes an attempt
    # only while it is still dialing. Rows of one statement keep their order (outbox ids).
    grouped: dict[int, tuple[Executable, list[Mapping[str, Any]]]] = {}
    for write in batch:
        for statement, params in write.statements:
            grouped.setdefault(id(statement), (statement, []))[1].append(params)
    for statement, rows in grouped.values():
        plan = _plan(conn.dialect, statement, rows[0])
        try:
            positional = None if plan is None else plan.tuples(rows)
        except Exception:  # rows of another shape, a value of the wrong type: SQLAlchemy
            positional = None  # raises what it raises (a StatementError fails the write alone)
        if plan is None or positional is None:
            conn.execute(statement, rows)
        else:
            conn.exec_driver_sql(plan.sql, positional)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled once for a dialect and a set of parameter names, with what turns
    each row into the driver's positional parameters (SQLAlchemy's own bind processors)."""

    statement: Executable  # kept alive: the cache is keyed by its id
    sql: str
    names: tuple[str, ...]  # the rows' parameters, in the statement's order
    tail: tuple[Any, ...]  # then the values bound in the statement itself
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, processor)

    def tuples(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        names, tail = self.names, self.tail
        get = itemgetter(*names) if len(names) > 1 else lambda row: (row[names[0]],)
        if not self.processors:
            return [get(row) + tail for row in rows]
        out = []
        for row in rows:
            values = list(get(row))
            for position, process in self.processors:
                if values[position] is not None:
                    values[position] = process(values[position])
            out.append((*values, *tail))
        return out


_PLANS: dict[tuple[str, int, tuple[str, ...]], _Plan | None] = {}


def _plan(dialect: Dialect, statement: Executable, row: Mapping[str, Any]) -> _Plan | None:
    """The cached :class:`_Plan` of ``statement`` for rows like ``row``; None for what it does
    not cover (a statement that is not compiled SQL, or a named paramstyle): executed the
    usual way. Compiling and processing each row through SQLAlchemy's executemany cost more
    than the commit itself at a thousand rows a batch."""
    key = (dialect.name, id(statement), tuple(row))
    if key in _PLANS:
        return _PLANS[key]
    plan = None
    compiled = statement.compile(dialect=dialect, column_keys=list(row))  # type: ignore[attr-defined]
    positions = getattr(compiled, "positiontup", None)
    if dialect.positional and positions:
        binds = [compiled.binds[name] for name in positions]
        # A parameter the rows must give comes from each row (a row without it makes the plan
        # refuse the group); one with its value in the statement is fixed.
        from_rows = [
            name in row or bind.required for name, bind in zip(positions, binds, strict=True)
        ]
        count = sum(from_rows)
        if count and all(from_rows[:count]):  # the fixed ones last (a WHERE's constants)
            processors = []
            for position, bind in enumerate(binds):
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None and position >= count:
                    break  # a fixed value to process: not planned, SQLAlchemy does it
                if process is not None:
                    processors.append((position, process))
            else:
                tail = tuple(bind.effective_value for bind in binds[count:])
                plan = _Plan(
                    statement,
                    compiled.string,
                    tuple(positions[:count]),
                    tail,
                    tuple(processors),
                )
    _PLANS[key] = plan
    return plan
