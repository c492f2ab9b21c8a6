"""The ledger: SQLAlchemy 2 (async) over SQLite or PostgreSQL.

Every write goes through one writer task (:mod:`dispatch.store.writer`) that group-commits
whatever is queued: the intents of concurrent dials, outcomes and skips share one transaction
(one fsync). A caller's ``await`` returns only once the transaction holding its write has
committed, so "intent committed before ``agent.dial()``" holds while the store still reaches
tens of thousands of rows per second. When the database goes away, outcomes, skips and
callback marks are held and committed once it is back; intents fail at once.

Every driver error becomes a :class:`~dispatch.errors.StoreError` at this boundary
(:mod:`dispatch.store.errors`); messages never carry the password, the SQL or its parameters.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskStatus
from sqlalchemy import (
    Connection,
    Executable,
    and_,
    bindparam,
    case,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import aliased

from .._gc import GcPause
from ..abc import CallResult
from ..clock import Clock, SystemClock
from ..errors import StoreError, StoreUnavailable
from ..histogram import HistogramStatistics
from ..options import Backoff, RecoverMode
from ..record import Record
from ..rules.caps import DialStart, is_refusal
from ..states import AttemptState, RecordState, SkipReason
from . import cluster
from . import instances as inst
from . import outbox as ob
from .cluster import shared_time
from .errors import translated
from .migrate import upgrade_connection
from .models import attempts, do_not_call, instances, records, sources
from .writer import Statements, Writer

__all__ = [
    "DoNotCall",
    "Heartbeat",
    "KnownRecord",
    "Skipped",
    "Store",
    "StoreStatistics",
    "async_url",
    "with_async_driver",
]

logger = logging.getLogger(__name__)

_CONTENT_SKIPS = frozenset(r.value for r in SkipReason if r.about_content)
_STATES = {state.value: state for state in RecordState}
_TERMINAL = frozenset(state.value for state in RecordState if state.terminal)
_SKIPPED = RecordState.SKIPPED.value
_INTERRUPTED = RecordState.INTERRUPTED
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_IN_FLIGHT = (AttemptState.DIALING.value, AttemptState.ACTIVE.value)
MIGRATION_LOCK = 0x6D696772617465  # "migrate": the advisory lock of a PostgreSQL upgrade
CONNECT_TIMEOUT = 10.0  # seconds to open a PostgreSQL connection
COMMAND_TIMEOUT = 60.0  # seconds one PostgreSQL statement may take
KNOWN_BATCH = 5_000  # records read from the store per trip to the driver
# Attempts whose call may still be live at the platform: their numbers are held for a while.
_MAYBE_LIVE = (AttemptState.INTERRUPTED.value, AttemptState.UNKNOWN.value)
# Record states no write from an intent or a skip may change (a content skip may be redone).
_FINAL = tuple(s.value for s in RecordState if s.terminal and s is not RecordState.SKIPPED)


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
    if parsed.drivername.split("+")[0] == "postgres":  # Heroku's and libpq's spelling
        rest = parsed.drivername.removeprefix("postgres")
        parsed = parsed.set(drivername="postgresql" + rest)
    backend = parsed.get_backend_name()
    if backend not in drivers:
        return None
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=drivers[backend])
    return parsed


class KnownRecord(NamedTuple):
    """What the store knows of a record: enough for dedup and attempt caps.

    A tuple of plain values (the state and reason as their string values, not enum members):
    the cyclic garbage collector stops tracking such tuples, so a campaign holding a million
    of them does not make every full collection walk a million more objects.
    """

    status: str  # a RecordState value; see `state`
    attempts: int
    retry_at: datetime | None = None  # for `retry` records: not before this time
    reason: str | None = None  # the skip reason, for skipped records
    phone: str | None = None  # the phone as skipped, for skipped records

    @classmethod
    def of(
        cls,
        state: RecordState,
        attempts: int,
        retry_at: datetime | None = None,
        reason: str | None = None,
        phone: str | None = None,
    ) -> KnownRecord:
        return cls(state.value, attempts, retry_at, None if reason is None else str(reason), phone)

    @property
    def state(self) -> RecordState:
        return _STATES[self.status]

    @property
    def terminal(self) -> bool:
        """Never dialed again (``state.terminal``, without building the enum member)."""
        return self.status in _TERMINAL

    @property
    def skipped_for_content(self) -> bool:
        """Skipped because the record's data was at fault (a fixed row deserves a new look)."""
        return self.status == _SKIPPED and self.reason in _CONTENT_SKIPS


@dataclass(frozen=True, slots=True)
class Skipped:
    """One record refused by admission, for :meth:`Store.skipped`."""

    strategy: str
    record_id: str
    phone: str
    state: RecordState
    reason: str
    attempts_made: int
    callback: ob.Callback | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """How often a daemon says it is alive, and after how long silence it counts as dead."""

    interval: float = 5.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.interval < self.timeout:
            raise ValueError("heartbeat needs 0 < interval < timeout")


class Store:
    """The persistent ledger. ``url`` is a SQLAlchemy URL (``sqlite:///dispatch.db``,
    ``postgresql://user@host/db``); the async driver is chosen for you.

    Use: ``await store.open()`` (migrates to the newest schema), start :meth:`run` in a task
    group (``await tg.start(store.run)``), write, then :meth:`close` and :meth:`aclose`.
    ``retry`` paces the writer's attempts to reach an unreachable database; ``clock`` is the
    time it reads (the hub passes its own).
    """

    def __init__(
        self,
        url: str | URL,
        *,
        queue_size: int = 10_000,
        retry: Backoff | None = None,
        heartbeat: Heartbeat | None = None,
        clock: Clock | None = None,
        cluster: bool = False,
    ) -> None:
        self.url = async_url(url)
        if cluster and self.url.get_backend_name() != "postgresql":
            raise StoreError(
                "several daemons on one store ([cluster] enabled) need PostgreSQL: SQLite "
                "takes one daemon; set [store] url to postgresql://..."
            )
        self.cluster = cluster
        self.clock = clock or SystemClock()
        # In a cluster, the clock every daemon reads (the database's, unless a test injects
        # one), and the ids of the daemons alive as last seen (this one's too).
        self.shared_time = shared_time(self.clock)
        self.peers: tuple[str, ...] = ()
        self.retry = retry or Backoff(initial=0.5, maximum=30.0)
        self.heartbeat_options = heartbeat or Heartbeat()
        self.instance: inst.Instance | None = None  # once claim()ed
        self._engine: AsyncEngine | None = None
        self._upsert_record = _UPSERT_RECORD[self.url.get_backend_name()]
        self._upsert_source = _UPSERT_SOURCE[self.url.get_backend_name()]
        self._insert_attempt = _INSERT_ATTEMPT[self.url.get_backend_name()]
        self._add_do_not_call = _ADD_DO_NOT_CALL[self.url.get_backend_name()]
        self._routes: dict[str, tuple[str, ...]] = {}  # callback -> webhook targets
        # (strategy, callback) -> whether a row for the strategy is worth writing (the hub's
        # answer: a callback left as the base no-op is not); None: every row is written.
        self.listening: Callable[[str, str], bool] | None = None
        # Called once a write that added outbox rows is committed (the hub: wake delivery).
        self.on_callbacks: Callable[[], None] | None = None
        self._queue_size = queue_size
        # Created by open(): a Store built but never opened holds nothing.
        self._writer: Writer | None = None

    @property
    def owner(self) -> str | None:
        """In a cluster, this daemon's id: it delivers its own outbox rows (and the dead's)."""
        return self.instance.id if self.cluster and self.instance is not None else None

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
        # Pre-ping: a connection the server dropped (restart, pg_terminate_backend) is
        # replaced at checkout instead of failing the next write.
        connect_args: dict[str, Any] = {}
        if self.url.get_backend_name() == "postgresql":
            # A network that drops packets instead of refusing them must still end in an
            # outage the writer can ride out, not in a write that waits for ever.
            connect_args = {"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT}
        engine = create_async_engine(self.url, pool_pre_ping=True, connect_args=connect_args)
        if self.url.get_backend_name() == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_connect)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
        self._engine = engine
        self._writer = Writer(
            lambda: self.engine,
            clock=self.clock,
            backoff=self.retry,
            probe=self._probe,
            queue_size=self._queue_size,
        )
        if migrate:
            await self.upgrade()

    async def upgrade(self) -> None:
        """Apply every pending Alembic migration."""
        with translated(f"migrating {self!r}"):
            async with self.engine.begin() as conn:
                if self.url.get_backend_name() == "postgresql":
                    # Daemons starting together migrate one after the other: the next finds
                    # the schema up to date. (SQLite's write lock does the same.)
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                       {"key": MIGRATION_LOCK})  # fmt: skip
                await conn.run_sync(upgrade_connection)

    def close(self) -> None:
        """Stop accepting writes; :meth:`run` commits what is queued and returns."""
        if self._writer is not None:
            self._writer.close()

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.dispose()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer: commit queued writes in groups until :meth:`close` is called."""
        await self._open_writer().run(task_status=task_status)

    @property
    def available(self) -> bool:
        """False while the store is unreachable (outcomes are held, intents refused)."""
        return self._writer is None or self._writer.available

    async def wait_available(self) -> None:
        """Return once the store can take writes again (at once if it can)."""
        await self._open_writer().wait_available()

    async def check(self) -> None:
        """Find out through the writer whether the store takes writes now: returns if it
        does; raises :class:`~dispatch.errors.StoreUnavailable` if not, and then the writer
        knows of the outage and probes until it is over (see :meth:`wait_available`). For a
        reader whose query just failed."""
        await self._write([], held=False)

    async def _probe(self) -> None:
        # A real write when this daemon is registered (its heartbeat): a store that answers
        # reads but refuses writes (a full disk) is not back.
        if self.instance is not None:
            await self.beat()
            return
        with translated("probing"):
            async with self.engine.connect() as conn:
                await conn.execute(select(1))

    def stop_retrying(self, after: float) -> None:
        """``after`` seconds from now on, writes held for an unreachable store fail instead
        of waiting for it: a stopping daemon must be able to exit."""
        self._open_writer().give_up_after(after)

    def statistics(self) -> StoreStatistics:
        stats = self._open_writer().statistics()
        return StoreStatistics(
            stats.commits,
            stats.writes,
            stats.held,
            stats.unavailable_since,
            stats.failed_tries,
            stats.commit_seconds,
        )

    async def wait_until(self, predicate: Callable[[StoreStatistics], bool]) -> None:
        """Return once ``predicate(store.statistics())`` holds; it is checked whenever an
        outage begins or ends or holds more writes (e.g. ``lambda s: s.held == 2``)."""
        writer = self._open_writer()
        await writer.changed.wait_until(lambda: predicate(self.statistics()))

    def _open_writer(self) -> Writer:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer

    # -- the daemon's identity ---------------------------------------------------------------

    async def claim(self) -> list[inst.Instance]:
        """Register this process as the store's daemon (see :mod:`dispatch.store.instances`);
        return the dead daemons it replaced. Raises :class:`~dispatch.errors.StoreInUse`."""
        me = inst.Instance.this_process(self.clock.now(), cluster=self.cluster)
        expiry = timedelta(seconds=self.heartbeat_options.timeout)
        if self.cluster:  # beside the live daemons; the dead ones are removed
            replaced, alive = await cluster.join(self.engine, me, self.shared_time, expiry=expiry)
            self.peers = tuple(alive)
        else:
            replaced = await inst.claim(self.engine, me, expiry=expiry)
        self.instance = me
        return replaced

    async def reap(self) -> list[inst.Instance]:
        """In a cluster: remove the daemons whose heartbeat expired and return them (their
        attempts in flight are then recovered: :meth:`recover`)."""
        assert self.instance is not None, "claim() first"
        expiry = timedelta(seconds=self.heartbeat_options.timeout)
        dead, alive = await cluster.reap(
            self.engine, self.instance, self.shared_time, expiry=expiry
        )
        self.peers = tuple(alive)
        return dead

    async def beat(self) -> bool:
        """Write this daemon's heartbeat; False if another daemon has taken the store over
        (or, in a cluster, judged this one dead)."""
        assert self.instance is not None, "claim() first"
        if self.cluster:
            return await cluster.beat(self.engine, self.instance, self.shared_time)
        return await inst.heartbeat(self.engine, self.instance, self.clock.now())

    async def release(self) -> None:
        """Unregister this daemon (a clean stop)."""
        if self.instance is not None:
            me, self.instance = self.instance, None
            await inst.release(self.engine, me)

    # -- reads -------------------------------------------------------------------------------

    async def known_records(
        self, strategy: str | None = None
    ) -> dict[tuple[str, str], KnownRecord]:
        """Every record the store has acted on (of ``strategy`` only, if given), keyed by
        ``(strategy, record_id)``."""
        by_strategy = await self.known_by_strategy(strategy)
        return {(s, r): k for s, known in by_strategy.items() for r, k in known.items()}

    async def known_by_strategy(
        self, strategy: str | None = None
    ) -> dict[str, dict[str, KnownRecord]]:
        """Every record the store has acted on (of ``strategy`` only, if given): strategy ->
        record id -> what is known.

        Read in batches, each one trip to the driver and a few milliseconds of work, with the
        cyclic GC off while the batches are taken in (a million new tuples would make it walk
        the growing heap again and again); records in the same state after as many attempts,
        with nothing else to say, share one :class:`KnownRecord`."""
        skipped = records.c.state == _SKIPPED
        query = select(
            records.c.strategy,
            records.c.record_id,
            records.c.state,
            records.c.attempts,
            records.c.retry_at,
            case((skipped, records.c.reason)),  # only a skip needs its reason and phone
            case((skipped, records.c.phone)),
        )
        if strategy is not None:
            query = query.where(records.c.strategy == strategy)
        found: dict[str, dict[str, KnownRecord]] = {}
        shared: dict[tuple[str, int], KnownRecord] = {}
        with translated("reading the records"):
            async with self.engine.connect() as conn:
                result = await conn.stream(query)
                batches = result.partitions(KNOWN_BATCH)
                with GcPause() as gc_pause:
                    while True:
                        with gc_pause.resumed():  # on while the driver reads
                            rows = await anext(batches, None)
                        if rows is None:
                            break
                        _take_known(rows, found, shared)
        return found

    async def recover(
        self, mode: RecoverMode, now: datetime, *, max_dials: int | None = None
    ) -> int:
        """Close the attempts that dead daemons left in flight; return how many.

        Only attempts whose owner is gone are touched (no owner, or an owner no longer in
        ``instances``: :meth:`claim` removed the dead ones). They become ``interrupted``. A
        record whose latest attempt is one of them becomes terminal ``interrupted`` with
        ``mode="interrupt"`` (never re-dialed: the phone may have rung), or goes back to
        ``retry`` with ``"retry"`` (the interrupted attempt still counts against the cap: a
        record that has had ``max_dials`` dials becomes ``interrupted`` instead). A record
        with a later attempt keeps its state: recovery never downgrades an outcome. In a
        cluster they end at the shared clock's time, not ``now`` (their numbers' hold
        counts from it).
        """
        later = aliased(attempts)
        newer = (
            select(later.c.id)
            .where(
                and_(
                    later.c.strategy == attempts.c.strategy,
                    later.c.record_id == attempts.c.record_id,
                    later.c.number > attempts.c.number,
                )
            )
            .exists()
        )
        orphaned = attempts.c.owner.is_(None) | attempts.c.owner.not_in(select(instances.c.id))
        query = select(
            attempts.c.id,
            attempts.c.strategy,
            attempts.c.record_id,
            attempts.c.phone,
            attempts.c.number,
            newer,
        ).where(attempts.c.state.in_(_IN_FLIGHT), orphaned)
        with translated("recovering interrupted attempts"):
            async with self.engine.begin() as conn:
                if self.cluster:  # one daemon at a time recovers (and none claims meanwhile)
                    await cluster.lock(conn)
                    now = (await conn.execute(select(self.shared_time.now()))).scalar_one()
                rows = (await conn.execute(query)).all()
                if not rows:
                    return 0
                await conn.execute(
                    update(attempts)
                    .where(attempts.c.id == bindparam("b_id"))
                    .values(
                        state=AttemptState.INTERRUPTED.value, reason="process ended", ended_at=now
                    ),
                    [{"b_id": row[0]} for row in rows],
                )
                retried: list[tuple[str, str, str]] = []
                final: list[tuple[str, str, str]] = []
                for _, s, r, p, number, superseded in rows:
                    if superseded:
                        continue
                    has_dials_left = max_dials is None or number < max_dials
                    (retried if mode == "retry" and has_dials_left else final).append((s, r, p))
                for group, state in ((retried, RecordState.RETRY), (final, _INTERRUPTED)):
                    if group:
                        await conn.execute(
                            update(records)
                            .where(records.c.strategy == bindparam("b_strategy"))
                            .where(records.c.record_id == bindparam("b_record_id"))
                            .values(state=state.value, reason="interrupted", updated_at=now),
                            [{"b_strategy": s, "b_record_id": r} for s, r, _ in group],
                        )
                if final:
                    # The record is final: report it. Only its id and phone survive a crash.
                    await conn.execute(
                        ob.INSERT,
                        [
                            row
                            for s, r, p in final
                            for row in self._callback_rows(
                                ob.Callback(
                                    s, "on_failed", Record(id=r, phone=p), ("interrupted",)
                                ),
                                now,
                            )
                        ],
                    )
        return len(rows)

    async def dial_starts(self, since: datetime) -> list[datetime]:
        """When the attempts committed after ``since`` were dialed, oldest first: the history
        the rate limiter is seeded with on start."""
        query = (
            select(attempts.c.dialed_at)
            .where(attempts.c.dialed_at > since)
            .order_by(attempts.c.dialed_at)
        )
        with translated("reading recent dial starts"):
            async with self.engine.connect() as conn:
                return list((await conn.execute(query)).scalars())

    async def dials_since(self, since: datetime) -> int:
        """How many dials started at or after ``since`` (every daemon's, in a cluster)."""
        query = select(func.count()).where(attempts.c.dialed_at >= since)
        with translated("counting dial starts"):
            async with self.engine.connect() as conn:
                return int((await conn.execute(query)).scalar_one())

    async def dial_history(self, since: datetime) -> list[DialStart]:
        """Every dial start after ``since`` (all strategies), oldest first, with whether the
        callee refused: what the per-number caps are seeded with on start."""
        query = (
            select(attempts.c.phone, attempts.c.dialed_at, attempts.c.reason, attempts.c.refused)
            .where(attempts.c.dialed_at > since)
            .order_by(attempts.c.dialed_at)
        )
        with translated("reading recent dial starts"):
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [
            DialStart(phone, at, refused=bool(refused) or is_refusal(reason))
            for phone, at, reason, refused in rows
        ]

    async def do_not_call_fingerprint(self) -> tuple[int, datetime | None]:
        """(entries, latest addition) of the do-not-call list: changes when it does."""
        query = select(func.count(), func.max(do_not_call.c.added_at))
        with translated("reading the do-not-call list"):
            async with self.engine.connect() as conn:
                count, latest = (await conn.execute(query)).one()
        return int(count), latest

    async def maybe_live(self, since: datetime) -> dict[str, datetime]:
        """Numbers whose latest call may still be live at the platform (interrupted by a
        crash or a drain, or of unknown outcome) and ended after ``since``: number -> when."""
        query = (
            select(attempts.c.phone, func.max(attempts.c.ended_at))
            .where(attempts.c.state.in_(_MAYBE_LIVE), attempts.c.ended_at > since)
            .group_by(attempts.c.phone)
        )
        with translated("reading numbers possibly still in a call"):
            async with self.engine.connect() as conn:
                return {phone: at for phone, at in (await conn.execute(query)).all()}

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
        evidence: Mapping[str, Any] | None = None,
    ) -> None:
        """Commit that attempt ``number`` of the record is about to be dialed (with the
        ``evidence`` of the calling rules that let it through).

        Fails at once with :class:`~dispatch.errors.StoreUnavailable` while the store is
        unreachable. Idempotent by ``attempt_id``: after a commit whose result was lost with
        the connection, the same intent may be written again.
        """
        attempt, record = self._intent_rows(
            attempt_id, strategy, record_id, number, phone, at, evidence
        )
        await self._write(
            [(self._insert_attempt, attempt), (self._upsert_record, record)], held=False
        )

    async def claim_dial(
        self,
        *,
        attempt_id: str,
        strategy: str,
        record_id: str,
        number: int,
        phone: str,
        at: datetime,
        limits: cluster.ClusterLimits,
        evidence: Mapping[str, Any] | None = None,
    ) -> cluster.Claim:
        """In a cluster, :meth:`intent` under every daemon's limits (see
        :func:`~dispatch.store.cluster.claim_dial`): commit it if they allow, else say why
        not. Idempotent by ``attempt_id``. An unreachable store raises
        :class:`~dispatch.errors.StoreUnavailable`, and the writer learns of the outage."""
        rows = self._intent_rows(attempt_id, strategy, record_id, number, phone, at, evidence)
        return await self._outage_told(
            cluster.claim_dial(
                self.engine,
                rows=rows,
                upsert_record=self._upsert_record,
                limits=limits,
                time=self.shared_time,
                clock=self.clock,
            )
        )

    async def restamp_claim(self, attempt_id: str, limits: cluster.ClusterLimits) -> cluster.Claim:
        """In a cluster, the dial of a claim goes out too long after its stamp (see
        ``limits.margin``): stamp it again, under the lock and the rate window (see
        :func:`~dispatch.store.cluster.restamp`). An unreachable store raises, as a claim."""
        return await self._outage_told(
            cluster.restamp(
                self.engine,
                attempt_id=attempt_id,
                owner=self.owner,
                limits=limits,
                time=self.shared_time,
                clock=self.clock,
            )
        )

    async def _outage_told(self, claim: Awaitable[cluster.Claim]) -> cluster.Claim:
        """``claim``'s answer; if the store is unreachable, the writer learns of it first."""
        try:
            return await claim
        except StoreUnavailable:
            await self.check()  # raises too; the writer now probes until the store is back
            raise

    async def taken(self, strategy: str, numbers: Mapping[str, int]) -> dict[str, cluster.Taken]:
        """In a cluster: which of these records (id -> the attempt this daemon would make)
        other daemons have claimed or finished, read without the cluster's lock."""
        return await cluster.taken(self.engine, strategy, numbers)

    def _intent_rows(
        self,
        attempt_id: str,
        strategy: str,
        record_id: str,
        number: int,
        phone: str,
        at: datetime,
        evidence: Mapping[str, Any] | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        attempt = {
            "id": attempt_id,
            "strategy": strategy,
            "record_id": record_id,
            "number": number,
            "phone": phone,
            "state": AttemptState.DIALING.value,
            "dialed_at": at,
            "owner": self.instance.id if self.instance is not None else None,
            "evidence": _encode_evidence(evidence) if evidence else None,
        }
        return attempt, _record_row(strategy, record_id, phone, RecordState.DIALING, number, at)

    async def restamp(self, attempt_id: str, *, at: datetime) -> None:
        """Commit that the dial of an attempt starts at ``at`` (later than its intent said:
        the intent's commit was slow). Held through an outage."""
        await self._write([(_RESTAMP_ATTEMPT, {"b_id": attempt_id, "b_at": at})])

    async def activated(
        self, attempt_id: str, call_id: str, *, at: datetime, callback: ob.Callback | None = None
    ) -> None:
        """Commit the platform's call id for an attempt (and its ``on_dispatched``)."""
        await self._write(self._activated(attempt_id, call_id, at, callback))

    def activated_soon(
        self,
        attempt_id: str,
        call_id: str,
        *,
        at: datetime,
        callback: ob.Callback | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        """:meth:`activated` without waiting for the commit: queued in order with the
        attempt's later writes (its outcome), held through an outage; ``failed(error)`` if
        it could not be committed. Nothing depends on it being committed first: it changes
        an attempt only while it is still dialing, and its ``on_dispatched`` is committed
        before the outcome's callbacks."""
        statements = self._activated(attempt_id, call_id, at, callback)

        def then(error: BaseException | None) -> None:
            if error is None:
                self._committed(statements)
            elif failed is not None:
                failed(error)

        self._open_writer().submit(statements, then)

    def _activated(
        self, attempt_id: str, call_id: str, at: datetime, callback: ob.Callback | None
    ) -> Statements:
        params = {"b_id": attempt_id, "b_call_id": call_id[:200], "b_state": _ACTIVE}
        return self._with_callback([(_UPDATE_ATTEMPT_CALL, params)], callback, at)

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
        started_at: datetime | None = None,
        results: Sequence[CallResult] = (),
        transcript: Sequence[Mapping[str, Any]] = (),
        callbacks: Sequence[ob.Callback] = (),
        opt_out: DoNotCall | None = None,
        refused: bool = False,
    ) -> None:
        """Commit an attempt's outcome, the record's resulting state and the callbacks that
        report it (``callback``, or several in order as ``callbacks``), together.
        ``retry_at``: when a record put back to ``retry`` is due. ``results`` and
        ``transcript``: what the call captured. ``opt_out``: a number to add to the
        do-not-call list in the same transaction.

        Held through an outage: returns once committed, however long the store is away."""
        reason = reason[:500] if reason is not None else None
        call_id = call_id[:200] if call_id is not None else None
        statements: Statements = [
            (
                _FINISH_ATTEMPT,
                {
                    "b_id": attempt_id,
                    "b_state": state.value,
                    "b_reason": reason,
                    "b_call_id": call_id,
                    "b_duration": duration,
                    "b_at": at,
                    "b_started_at": started_at,
                    "b_results": _results_json(results),
                    "b_transcript": _transcript_json(transcript),
                    "b_refused": refused or None,
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
        if opt_out is not None:
            statements.append((self._add_do_not_call, opt_out.row(at)))
        for each in (callback, *callbacks):
            self._with_callback(statements, each, at)
        await self._write(statements)

    async def add_do_not_call(self, entries: Sequence[DoNotCall], *, at: datetime) -> None:
        """Add numbers to the do-not-call list (a number already there is left as it was)."""
        await self._write([(self._add_do_not_call, entry.row(at)) for entry in entries])

    async def do_not_call(self) -> dict[str, DoNotCall]:
        """The do-not-call list, by number."""
        query = select(do_not_call)
        with translated("reading the do-not-call list"):
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return {
            row.phone: DoNotCall(
                row.phone,
                row.source,
                row.strategy,
                row.record_id,
                row.reason,
                row.added_at,
                row.attempt_id,
            )
            for row in rows
        }

    async def rejections(self) -> dict[tuple[str, str], list[str | None]]:
        """The rejection reasons, oldest first, of every record waiting to retry."""
        query = (
            select(attempts.c.strategy, attempts.c.record_id, attempts.c.reason)
            .join(
                records,
                and_(
                    records.c.strategy == attempts.c.strategy,
                    records.c.record_id == attempts.c.record_id,
                ),
            )
            .where(records.c.state == RecordState.RETRY.value)
            .where(attempts.c.state == AttemptState.REJECTED.value)
            .order_by(attempts.c.number)
        )
        found: dict[tuple[str, str], list[str | None]] = {}
        with translated("reading the rejections of records to retry"):
            async with self.engine.connect() as conn:
                for strategy, record_id, reason in (await conn.execute(query)).all():
                    found.setdefault((strategy, record_id), []).append(reason)
        return found

    async def skipped(self, skips: Sequence[Skipped], *, at: datetime) -> None:
        """Commit that records were refused by admission (terminal, never dialed again), with
        their ``on_skipped`` callbacks, in one transaction. Held through an outage."""
        statements: Statements = []
        for skip in skips:
            row = _record_row(
                skip.strategy, skip.record_id, skip.phone[:32], skip.state, skip.attempts_made, at
            )
            row["reason"] = skip.reason
            statements.append((self._upsert_record, row))
            self._with_callback(statements, skip.callback, at)
        await self._write(statements)

    async def polled(
        self,
        strategy: str,
        *,
        pending: int,
        waiting: int,
        at: datetime,
        reasons: Mapping[str, int] | None = None,
    ) -> None:
        """Commit what the hub holds in memory for a strategy after a poll (best effort: fails
        at once while the store is unreachable); ``reasons`` counts the waiting by reason."""
        row = {
            "strategy": strategy,
            "pending": pending,
            "waiting": waiting,
            "polled_at": at,
            "waiting_reasons": json.dumps(dict(reasons)) if reasons else None,
        }
        await self._write([(self._upsert_source, row)], held=False)

    async def delivered(self, outbox_ids: list[int], at: datetime) -> None:
        """Commit that these outbox rows' callbacks returned."""
        await self._write([(ob.DELIVERED, {"b_id": i, "b_at": at}) for i in outbox_ids])

    async def delivery_failed(
        self, outbox_id: int, deliveries: int, next_at: datetime, error: str
    ) -> None:
        """Commit a failed delivery and when to try again."""
        params = {"b_id": outbox_id, "b_deliveries": deliveries, "b_next_at": next_at}
        await self._write([(ob.FAILED, {**params, "b_error": error[:500]})])

    def route_webhooks(self, routes: Mapping[str, Sequence[str]]) -> None:
        """From now on, every callback ``name`` committed also gets a row for each outbox
        target in ``routes[name]`` (``webhook:<endpoint>``), in the same transaction."""
        self._routes = {name: tuple(targets) for name, targets in routes.items()}

    def _callback_rows(self, callback: ob.Callback, at: datetime) -> list[dict[str, Any]]:
        owner = self.owner
        listened = self.listening is None or self.listening(callback.strategy, callback.name)
        rows = [callback.row(at) | {"owner": owner}] if listened else []
        for target in self._routes.get(callback.name, ()):
            # A webhook's row names the strategy the event is about first.
            hook = ob.Callback(
                target, callback.name, callback.record, (callback.strategy, *callback.args)
            )
            row = hook.row(at) | {"owner": owner}
            # One lane per record of each strategy: a record "42" of two strategies has two.
            row["record_id"] = f"{callback.strategy}/{callback.record.id}"[:500]
            rows.append(row)
        return rows

    def _with_callback(
        self, statements: Statements, callback: ob.Callback | None, at: datetime
    ) -> Statements:
        if callback is not None:
            statements.extend((ob.INSERT, row) for row in self._callback_rows(callback, at))
        return statements

    async def _write(self, statements: Statements, *, held: bool = True) -> None:
        await self._open_writer().write(statements, held=held)
        self._committed(statements)

    def _committed(self, statements: Statements) -> None:
        """``statements`` were committed: if they added outbox rows, say so."""
        if self.on_callbacks is not None and any(s is ob.INSERT for s, _ in statements):
            self.on_callbacks()


@dataclass(frozen=True, slots=True)
class DoNotCall:
    """A number never to be dialed again, and what put it on the list."""

    phone: str
    source: str  # "result" (an opt-out answer), "import", "cli" ...
    strategy: str | None = None
    record_id: str | None = None
    reason: str | None = None
    added_at: datetime | None = None  # as read from the store
    attempt_id: str | None = None  # the attempt whose result put it there

    def row(self, at: datetime) -> dict[str, Any]:
        return {
            "phone": self.phone[:32],
            "added_at": at,
            "source": self.source[:40],
            "strategy": self.strategy,
            "record_id": self.record_id[:500] if self.record_id else None,
            "reason": self.reason[:500] if self.reason else None,
            "attempt_id": self.attempt_id,
        }


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    commits: int
    writes: int
    held: int = 0  # writes waiting for an unreachable store
    unavailable_since: float | None = None  # monotonic time the current outage began
    failed_tries: int = 0  # tries to reach it that failed in the current outage
    commit_seconds: HistogramStatistics | None = None  # how long each commit took

    @property
    def writes_per_commit(self) -> float:
        return self.writes / self.commits if self.commits else math.nan


def _take_known(
    rows: Sequence[Any],
    found: dict[str, dict[str, KnownRecord]],
    shared: dict[tuple[str, int], KnownRecord],
) -> None:
    """Add a batch of (strategy, id, state, attempts, retry_at, reason, phone) rows."""
    for name, record_id, state, made, retry_at, reason, phone in rows:
        known = found.get(name)
        if known is None:
            known = found[name] = {}
        if retry_at is None and reason is None:
            key = (state, made)
            known[record_id] = shared.get(key) or shared.setdefault(key, KnownRecord(state, made))
        else:
            known[record_id] = KnownRecord(state, made, retry_at, reason, phone)


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
        # Never over a finished record or a later attempt: in a cluster another daemon may
        # have moved the record on since this one looked (a skip decided on a stale view).
        # (`!=` each, not NOT IN: an expanding list cannot go into an executemany.)
        where=and_(
            records.c.attempts <= stmt.excluded.attempts, *(records.c.state != s for s in _FINAL)
        ),
    )
    return upsert


def _upsert_sources(dialect: Any) -> Executable:
    stmt = dialect.insert(sources)
    upsert: Executable = stmt.on_conflict_do_update(
        index_elements=[sources.c.strategy],
        set_={c: stmt.excluded[c] for c in ("pending", "waiting", "polled_at", "waiting_reasons")},
    )
    return upsert


def _insert_attempt(dialect: Any) -> Executable:
    # Idempotent by id only: an intent written again after a lost commit takes the new time
    # (its dial is about to start now), while a second attempt with the same (strategy,
    # record_id, number) still fails on its unique constraint, which is what keeps a record
    # from being dialed twice.
    insert = dialect.insert(attempts)
    stmt: Executable = insert.on_conflict_do_update(
        index_elements=["id"], set_={"dialed_at": insert.excluded.dialed_at}
    )
    return stmt


_INSERT_ATTEMPT = {"sqlite": _insert_attempt(sqlite), "postgresql": _insert_attempt(postgresql)}
_UPSERT_SOURCE = {"sqlite": _upsert_sources(sqlite), "postgresql": _upsert_sources(postgresql)}
_UPSERT_RECORD = {"sqlite": _upsert(sqlite), "postgresql": _upsert(postgresql)}
_RESTAMP_ATTEMPT = (
    update(attempts).where(attempts.c.id == bindparam("b_id")).values(dialed_at=bindparam("b_at"))
)
# Only while the attempt is dialing: committed after its outcome (the call ended first, in
# the same batch), it must not make a finished attempt active again.
_UPDATE_ATTEMPT_CALL = (
    update(attempts)
    .where(attempts.c.id == bindparam("b_id"), attempts.c.state == AttemptState.DIALING.value)
    .values(state=bindparam("b_state"), call_id=bindparam("b_call_id"))
)
_ACTIVE = AttemptState.ACTIVE.value
_FINISH_ATTEMPT = (
    update(attempts)
    .where(attempts.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        reason=bindparam("b_reason"),
        call_id=bindparam("b_call_id"),
        duration=bindparam("b_duration"),
        ended_at=bindparam("b_at"),
        started_at=bindparam("b_started_at"),
        results=bindparam("b_results"),
        transcript=bindparam("b_transcript"),
        refused=bindparam("b_refused"),
    )
)

# One encoder for every intent's evidence (json.dumps would build one per call).
_encode_evidence = json.JSONEncoder(default=str).encode

# What the ledger keeps of a transcript: a call of an hour fits; a runaway one is cut.
TRANSCRIPT_LIMIT = 256 * 1024


def _results_json(results: Sequence[CallResult]) -> str | None:
    return json.dumps([r.to_json() for r in results], default=str) if results else None


def _transcript_json(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The transcript as JSON, its oldest messages kept whole up to TRANSCRIPT_LIMIT."""
    if not messages:
        return None
    kept: list[str] = []
    size = 2
    for message in messages:
        encoded = json.dumps(dict(message), default=str)
        if size + len(encoded) + 1 > TRANSCRIPT_LIMIT:
            kept.append(json.dumps({"truncated": len(messages) - len(kept)}))
            break
        kept.append(encoded)
        size += len(encoded) + 1
    return "[" + ",".join(kept) + "]"


def _add_do_not_call(dialect: Any) -> Executable:
    stmt: Executable = dialect.insert(do_not_call).on_conflict_do_nothing(index_elements=["phone"])
    return stmt


_ADD_DO_NOT_CALL = {"sqlite": _add_do_not_call(sqlite), "postgresql": _add_do_not_call(postgresql)}
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
