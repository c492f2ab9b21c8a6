"""The ledger: SQLAlchemy 2 (async) over SQLite or PostgreSQL.

Every write goes through one writer task that group-commits whatever is queued: the intents of
concurrent dials, outcomes and skips share one transaction (one fsync). A caller's ``await``
returns only once the transaction holding its write has committed, so "intent committed before
``agent.dial()``" holds while the store still reaches tens of thousands of rows per second.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sqlalchemy import Connection, Executable, bindparam, event, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import StoreError
from ..options import RecoverMode
from ..record import Record
from ..states import AttemptState, RecordState, SkipReason
from . import outbox as ob
from .migrate import upgrade_connection
from .models import attempts, records, sources

__all__ = ["KnownRecord", "Store", "StoreStatistics", "async_url"]

logger = logging.getLogger(__name__)

_CONTENT_SKIPS = frozenset(r.value for r in SkipReason if r.about_content)
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def async_url(url: str | URL) -> URL:
    """Map a plain ``sqlite:///`` or ``postgresql://`` URL onto its async driver."""
    parsed = with_async_driver(url, _ASYNC_DRIVERS)
    if parsed is None:
        raise StoreError(
            f"unsupported store {make_url(url).get_backend_name()!r}: use sqlite:/// or "
            "postgresql://"
        )
    return parsed


def with_async_driver(url: str | URL, drivers: Mapping[str, str]) -> URL | None:
    """``url`` with the async driver ``drivers`` names for its backend when it names none
    (``postgresql://`` -> ``postgresql+asyncpg://``); None for a backend not in ``drivers``."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in drivers:
        return None
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=drivers[backend])
    return parsed


@dataclass(frozen=True, slots=True)
class KnownRecord:
    """What the store knows of a record: enough for dedup and attempt caps."""

    state: RecordState
    attempts: int
    retry_at: datetime | None = None  # for `retry` records: not before this time
    reason: str | None = None  # the skip reason, for skipped records
    phone: str | None = None  # the phone as skipped, for skipped records

    @property
    def skipped_for_content(self) -> bool:
        """Skipped because the record's data was at fault (a fixed row deserves a new look)."""
        return self.state is RecordState.SKIPPED and self.reason in _CONTENT_SKIPS


@dataclass(slots=True)
class _Write:
    """One logical write: statements to run with their parameters, committed atomically."""

    statements: list[tuple[Executable, dict[str, Any]]]
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class Store:
    """The persistent ledger. ``url`` is a SQLAlchemy URL (``sqlite:///dispatch.db``,
    ``postgresql://user@host/db``); the async driver is chosen for you.

    Use: ``await store.open()`` (migrates to the newest schema), start :meth:`run` in a task
    group (``await tg.start(store.run)``), write, then :meth:`close` and :meth:`aclose`.
    """

    def __init__(self, url: str | URL, *, queue_size: int = 10_000) -> None:
        self.url = async_url(url)
        self._engine: AsyncEngine | None = None
        self._upsert_record = _UPSERT_RECORD[self.url.get_backend_name()]
        self._upsert_source = _UPSERT_SOURCE[self.url.get_backend_name()]
        self._queue_size = queue_size
        # The write queue is created by open(): a Store built but never opened holds nothing.
        self._send: MemoryObjectSendStream[_Write] | None = None
        self._receive: MemoryObjectReceiveStream[_Write] | None = None
        self._commits = 0
        self._rows = 0

    def __repr__(self) -> str:
        # Never render the password (DESIGN guarantee 8).
        return f"Store({self.url.render_as_string(hide_password=True)!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the store is not open")
        return self._engine

    async def open(self, *, migrate: bool = True) -> None:
        """Connect, and upgrade the schema to the newest migration unless ``migrate`` is off."""
        self._send, self._receive = anyio.create_memory_object_stream[_Write](self._queue_size)
        engine = create_async_engine(self.url)
        if self.url.get_backend_name() == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_connect)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
        self._engine = engine
        if migrate:
            await self.upgrade()

    async def upgrade(self) -> None:
        """Apply every pending Alembic migration."""
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(upgrade_connection)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate {self!r}: {exc.__class__.__name__}") from exc

    def close(self) -> None:
        """Stop accepting writes; :meth:`run` commits what is queued and returns."""
        if self._send is not None:
            self._send.close()

    async def aclose(self) -> None:
        self.close()
        if self._receive is not None:
            self._receive.close()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer: commit queued writes in groups until :meth:`close` is called."""
        receive = self._receive
        if receive is None:
            raise StoreError("open() the store before running its writer")
        task_status.started()
        async with receive:
            batch: list[_Write] = []
            try:
                async for first in receive:
                    batch = [first]
                    while True:
                        try:
                            batch.append(receive.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await self._commit(batch)
                    batch = []
            finally:
                # Cancelled or closed: nobody may wait forever for a write that will never
                # happen. What was queued or in progress is failed; the attempts concerned
                # stay in flight in the store and are recovered as interrupted.
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                for write in batch:
                    if not write.done.is_set():
                        write.error = StoreError("the store writer stopped")
                        write.done.set()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(commits=self._commits, writes=self._rows)

    # -- reads -------------------------------------------------------------------------------

    async def known_records(self) -> dict[tuple[str, str], KnownRecord]:
        """Every record the store has acted on, keyed by ``(strategy, record_id)``."""
        query = select(
            records.c.strategy,
            records.c.record_id,
            records.c.state,
            records.c.attempts,
            records.c.retry_at,
            records.c.reason,
            records.c.phone,
        )
        async with self.engine.connect() as conn:
            result = await conn.stream(query)
            return {
                (row.strategy, row.record_id): KnownRecord(
                    RecordState(row.state),
                    row.attempts,
                    row.retry_at,
                    *((row.reason, row.phone) if row.state == RecordState.SKIPPED else ()),
                )
                async for row in result
            }

    async def recover(self, mode: RecoverMode, now: datetime) -> int:
        """Close the attempts a previous process left in flight; return how many.

        They become ``interrupted``. With ``mode="interrupt"`` their records become terminal
        ``interrupted`` (never re-dialed: the phone may have rung); with ``"retry"`` the records
        are put back to ``retry`` and the interrupted attempt still counts against the cap.
        """
        in_flight = [AttemptState.DIALING.value, AttemptState.ACTIVE.value]
        record_state = RecordState.RETRY if mode == "retry" else RecordState.INTERRUPTED
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(attempts.c.strategy, attempts.c.record_id, attempts.c.phone).where(
                        attempts.c.state.in_(in_flight)
                    )
                )
            ).all()
            if not rows:
                return 0
            await conn.execute(
                update(attempts)
                .where(attempts.c.state.in_(in_flight))
                .values(state=AttemptState.INTERRUPTED.value, reason="process ended", ended_at=now)
            )
            await conn.execute(
                update(records)
                .where(records.c.strategy == bindparam("b_strategy"))
                .where(records.c.record_id == bindparam("b_record_id"))
                .values(state=record_state.value, reason="interrupted", updated_at=now),
                [{"b_strategy": s, "b_record_id": r} for s, r, _ in rows],
            )
            if mode == "interrupt":
                # The record is final: report it. Only its id and phone survive a crash.
                await conn.execute(
                    ob.INSERT,
                    [
                        ob.Callback(s, "on_failed", Record(id=r, phone=p), ("interrupted",)).row(
                            now
                        )
                        for s, r, p in rows
                    ],
                )
        return len(rows)

    # -- writes (each returns once committed) ------------------------------------------------

    async def intent(
        self,
        *,
        attempt_id: str,
        strategy: str,
        record_id: str,
        number: int,
        phone: str,
        at: datetime,
    ) -> None:
        """Commit that attempt ``number`` of the record is about to be dialed."""
        await self._write(
            [
                (
                    _INSERT_ATTEMPT,
                    {
                        "id": attempt_id,
                        "strategy": strategy,
                        "record_id": record_id,
                        "number": number,
                        "phone": phone,
                        "state": AttemptState.DIALING.value,
                        "dialed_at": at,
                    },
                ),
                (
                    self._upsert_record,
                    _record_row(strategy, record_id, phone, RecordState.DIALING, number, at),
                ),
            ]
        )

    async def activated(
        self, attempt_id: str, call_id: str, *, at: datetime, callback: ob.Callback | None = None
    ) -> None:
        """Commit the platform's call id for an attempt (and its ``on_dispatched``)."""
        statements: list[tuple[Executable, dict[str, Any]]] = [
            (_UPDATE_ATTEMPT_CALL, {"b_id": attempt_id, "b_call_id": call_id})
        ]
        await self._write(_with_callback(statements, callback, at))

    async def finished(
        self,
        *,
        attempt_id: str,
        strategy: str,
        record_id: str,
        state: AttemptState,
        record_state: RecordState,
        reason: str | None,
        call_id: str | None,
        duration: float | None,
        at: datetime,
        callback: ob.Callback | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        """Commit an attempt's outcome, the record's resulting state and the callback that
        reports it, together. ``retry_at``: when a record put back to ``retry`` is due."""
        statements: list[tuple[Executable, dict[str, Any]]] = [
            (
                _FINISH_ATTEMPT,
                {
                    "b_id": attempt_id,
                    "b_state": state.value,
                    "b_reason": reason,
                    "b_call_id": call_id,
                    "b_duration": duration,
                    "b_at": at,
                },
            ),
            (
                _UPDATE_RECORD,
                {
                    "b_strategy": strategy,
                    "b_record_id": record_id,
                    "b_state": record_state.value,
                    "b_reason": reason,
                    "b_call_id": call_id,
                    "b_at": at,
                    "b_retry_at": retry_at,
                },
            ),
        ]
        await self._write(_with_callback(statements, callback, at))

    async def skipped(
        self,
        *,
        strategy: str,
        record_id: str,
        phone: str,
        state: RecordState,
        reason: str,
        attempts_made: int,
        at: datetime,
        callback: ob.Callback | None = None,
    ) -> None:
        """Commit that a record was refused by admission (terminal, never dialed again)."""
        row = _record_row(strategy, record_id, phone, state, attempts_made, at)
        row["reason"] = reason
        await self._write(_with_callback([(self._upsert_record, row)], callback, at))

    async def polled(self, strategy: str, *, pending: int, waiting: int, at: datetime) -> None:
        """Commit what the hub holds in memory for a strategy after a poll."""
        row = {"strategy": strategy, "pending": pending, "waiting": waiting, "polled_at": at}
        await self._write([(self._upsert_source, row)])

    async def delivered(self, outbox_ids: list[int], at: datetime) -> None:
        """Commit that these outbox rows' callbacks returned."""
        await self._write([(ob.DELIVERED, {"b_id": i, "b_at": at}) for i in outbox_ids])

    async def delivery_failed(
        self, outbox_id: int, deliveries: int, next_at: datetime, error: str
    ) -> None:
        """Commit a failed delivery and when to try again."""
        params = {"b_id": outbox_id, "b_deliveries": deliveries, "b_next_at": next_at}
        await self._write([(ob.FAILED, {**params, "b_error": error[:500]})])

    # -- the writer --------------------------------------------------------------------------

    async def _write(self, statements: list[tuple[Executable, dict[str, Any]]]) -> None:
        write = _Write(statements)
        if self._send is None:
            raise StoreError("the store is not open")
        try:
            await self._send.send(write)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise StoreError("the store is closed") from exc
        await write.done.wait()
        if write.error is not None:
            raise StoreError(f"write failed: {write.error}") from write.error

    async def _commit(self, batch: list[_Write]) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(_apply, batch)
        except SQLAlchemyError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                # One bad write must not fail its neighbours: retry each on its own.
                logger.warning(
                    "store.batch_failed size=%d error=%s", len(batch), type(exc).__name__
                )
                for write in batch:
                    await self._commit([write])
                return
        self._commits += 1
        self._rows += len(batch)
        for write in batch:
            write.done.set()


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    commits: int
    writes: int

    @property
    def writes_per_commit(self) -> float:
        return self.writes / self.commits if self.commits else math.nan


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


def _with_callback(
    statements: list[tuple[Executable, dict[str, Any]]], callback: ob.Callback | None, at: datetime
) -> list[tuple[Executable, dict[str, Any]]]:
    if callback is not None:
        statements.append((ob.INSERT, callback.row(at)))
    return statements


def _record_row(
    strategy: str, record_id: str, phone: str, state: RecordState, attempts_made: int, at: datetime
) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "record_id": record_id,
        "phone": phone,
        "state": state.value,
        "attempts": attempts_made,
        "reason": None,
        "call_id": None,
        "created_at": at,
        "updated_at": at,
        "retry_at": None,
    }


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets `dispatch status` read while the daemon writes; synchronous=FULL because a
    # committed intent lost to a power cut could let a record be dialed twice.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
    # The sqlite3 driver runs DDL outside any transaction, so a crash in the middle of a
    # migration would leave half a schema that no later start can upgrade. Take transaction
    # control from the driver and BEGIN ourselves (see _sqlite_begin): DDL becomes atomic.
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def _upsert(dialect: Any) -> Executable:
    stmt = dialect.insert(records)
    upsert: Executable = stmt.on_conflict_do_update(
        index_elements=[records.c.strategy, records.c.record_id],
        set_={
            "phone": stmt.excluded.phone,
            "state": stmt.excluded.state,
            "attempts": stmt.excluded.attempts,
            "reason": stmt.excluded.reason,
            "call_id": stmt.excluded.call_id,
            "updated_at": stmt.excluded.updated_at,
            "retry_at": stmt.excluded.retry_at,
        },
    )
    return upsert


def _upsert_sources(dialect: Any) -> Executable:
    stmt = dialect.insert(sources)
    upsert: Executable = stmt.on_conflict_do_update(
        index_elements=[sources.c.strategy],
        set_={c: stmt.excluded[c] for c in ("pending", "waiting", "polled_at")},
    )
    return upsert


_INSERT_ATTEMPT = attempts.insert()
_UPSERT_SOURCE = {"sqlite": _upsert_sources(sqlite), "postgresql": _upsert_sources(postgresql)}
_UPSERT_RECORD = {"sqlite": _upsert(sqlite), "postgresql": _upsert(postgresql)}
_UPDATE_ATTEMPT_CALL = (
    update(attempts)
    .where(attempts.c.id == bindparam("b_id"))
    .values(state=AttemptState.ACTIVE.value, call_id=bindparam("b_call_id"))
)
_FINISH_ATTEMPT = (
    update(attempts)
    .where(attempts.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        reason=bindparam("b_reason"),
        call_id=bindparam("b_call_id"),
        duration=bindparam("b_duration"),
        ended_at=bindparam("b_at"),
    )
)
_UPDATE_RECORD = (
    update(records)
    .where(records.c.strategy == bindparam("b_strategy"))
    .where(records.c.record_id == bindparam("b_record_id"))
    .values(
        state=bindparam("b_state"),
        reason=bindparam("b_reason"),
        call_id=bindparam("b_call_id"),
        updated_at=bindparam("b_at"),
        retry_at=bindparam("b_retry_at"),
    )
)
