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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sqlalchemy import Connection, Executable, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..clock import Clock, Signal, wait_for
from ..errors import StoreError, StoreUnavailable
from ..options import Backoff
from .errors import DRIVER_ERRORS, store_error

__all__ = ["Statements", "Writer", "WriterStatistics"]

logger = logging.getLogger(__name__)

Statements = list[tuple[Executable, dict[str, Any]]]


@dataclass(slots=True)
class _Write:
    """One logical write: statements committed atomically, and whether an outage holds it."""

    statements: Statements
    held: bool
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    commits: int
    writes: int
    held: int  # writes waiting for the store to come back
    unavailable_since: float | None  # monotonic time the current outage began


class Writer:
    """Commits writes in groups on ``engine()``; see the module docstring."""

    def __init__(
        self,
        engine: Callable[[], AsyncEngine],
        *,
        clock: Clock,
        backoff: Backoff,
        queue_size: int = 10_000,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._backoff = backoff
        self._send: MemoryObjectSendStream[_Write]
        self._receive: MemoryObjectReceiveStream[_Write]
        self._send, self._receive = anyio.create_memory_object_stream[_Write](queue_size)
        self._commits = 0
        self._rows = 0
        self._held = 0
        self._outage: StoreUnavailable | None = None
        self._outage_since: float | None = None
        self._available = anyio.Event()
        self._available.set()
        self._give_up_at: float | None = None
        self._wake = anyio.Event()
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
        if self._outage is not None and not held:
            raise self._outage
        write = _Write(statements, held)
        try:
            await self._send.send(write)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise StoreError("the store is closed") from exc
        await write.done.wait()
        if write.error is not None:
            raise write.error

    def give_up_after(self, seconds: float) -> None:
        """``seconds`` from now on, stop holding writes for an unreachable store: they fail
        with :class:`StoreUnavailable`. The hub sets it when it stops, so that an outage
        cannot keep a stopping daemon alive for ever."""
        self._give_up_at = self._clock.monotonic() + seconds
        self._wake.set()

    def close(self) -> None:
        """Stop accepting writes; :meth:`run` commits what is queued, then returns."""
        self._send.close()

    def dispose(self) -> None:
        """Drop the queue (after :meth:`run` returned, or if it never ran)."""
        self._send.close()
        self._receive.close()

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(self._commits, self._rows, self._held, self._outage_since)

    # -- the task ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Commit queued writes in groups until :meth:`close`; ride out outages."""
        task_status.started()
        batch: list[_Write] = []
        async with self._receive:
            try:
                while True:
                    if not batch:
                        try:
                            batch.append(await self._receive.receive())
                        except anyio.EndOfStream:
                            return
                    self._drain(batch)
                    try:
                        await self._commit(batch)
                    except StoreUnavailable as exc:
                        batch = await self._ride_out(batch, exc)
                        continue
                    batch = []
                    if self._outage is not None:
                        self._back()
            finally:
                # Cancelled or closed: nobody may wait for ever for a write that will never
                # happen. The attempts concerned stay in flight in the store and are recovered
                # as interrupted on the next start.
                self._drain(batch)
                stopped = StoreError("the store writer stopped")
                for write in batch:
                    write.fail(stopped)

    def _drain(self, batch: list[_Write]) -> None:
        while True:
            try:
                batch.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return

    async def _commit(self, batch: list[_Write]) -> None:
        """Commit ``batch`` in one transaction. A write the database refuses is failed alone
        (its neighbours are committed without it); an outage raises for the whole batch."""
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
        self._commits += 1
        self._rows += len(batch)
        for write in batch:
            write.done.set()

    async def _ride_out(self, batch: list[_Write], error: StoreUnavailable) -> list[_Write]:
        """An outage: fail the fail-fast writes, keep the held ones, wait, and return what to
        try again (in the order it was written)."""
        if self._outage is None:
            self._outage = error
            self._outage_since = self._clock.monotonic()
            self._available = anyio.Event()
            self._failures = 0
            logger.error(
                "store.unavailable %s (holding outcomes until it is back; no new dials)", error
            )
        self._failures += 1
        self._drain(batch)
        giving_up = self._giving_up()
        for write in batch:
            if not write.held or giving_up:
                write.fail(error)
        batch = [w for w in batch if not w.done.is_set()]
        self._held = len(batch)
        self.changed.notify()
        if giving_up:
            return batch  # stopping: each later write gets one try, and fails alone
        delay = self._backoff.delay(self._failures)
        logger.debug("store.retry held=%d in=%.1fs", len(batch), delay)
        self._wake = anyio.Event()
        deadline = self._clock.monotonic() + delay
        if self._give_up_at is not None:
            deadline = min(deadline, max(self._give_up_at, self._clock.monotonic()))
        await wait_for(self._wake, deadline, self._clock)
        if not batch:
            await self._probe()
        return batch

    async def _probe(self) -> None:
        """Nothing is held: find out whether the store is back with a trivial query."""
        try:
            async with self._engine().connect() as conn:
                await conn.execute(text("SELECT 1"))
        except DRIVER_ERRORS as exc:
            logger.debug("store.probe_failed %s", store_error(exc, "probing"))
            return
        self._back()

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
        return self._give_up_at is not None and self._clock.monotonic() >= self._give_up_at


def _apply(conn: Connection, batch: Sequence[_Write]) -> None:
    # Group rows by statement, in order of first appearance. Safe because a batch never holds
    # two writes for one attempt or one record: each write of an attempt waits for the commit
    # of the previous one, and a record has at most one attempt in flight.
    grouped: dict[int, tuple[Executable, list[Mapping[str, Any]]]] = {}
    for write in batch:
        for statement, params in write.statements:
            grouped.setdefault(id(statement), (statement, []))[1].append(params)
    for statement, rows in grouped.values():
        conn.execute(statement, rows)
