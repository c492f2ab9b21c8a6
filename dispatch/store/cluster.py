"""Several daemons on one PostgreSQL (``[cluster] enabled = true``): PostgreSQL coordinates.

- **Instances.** Each daemon registers in ``instances`` (:func:`join`) and beats; nobody is
  refused. A daemon whose heartbeat expired (or whose process is provably gone) is removed
  by whoever notices first (:func:`reap`), and only then do its attempts in flight become
  ``interrupted`` (:meth:`Store.recover`, owner-tied): never another's live ones.
- **Claims.** The intent of a dial *is* the claim: :func:`claim_dial` commits it in one short
  transaction under a transaction-level advisory lock that every daemon takes, after
  checking, in the database, what every daemon together must respect:

  - the record: not finished, not in a call, and this attempt not made already (two daemons
    polling one CSV never both dial a row; the loser learns the record's state);
  - the number: not in a call anywhere, and not held (a dead daemon's call ended less than
    ``hold`` ago);
  - the concurrency cap: fewer than ``max_concurrent`` calls in flight across daemons (a
    dead daemon's calls count until their hold ends: they may still be live);
  - the rate: fewer than ``max_calls_per_minute`` dial starts in the sliding window, each
    counting for the window plus a margin (its dial reaches the platform after the claim;
    one that cannot go out within it is stamped again first: :func:`restamp`);
  - the number's caps (per 24 h, per 30 days, minimum gap, cool-down after a refusal).

  The lock is held for a handful of indexed queries. No daemon waits on another for long,
  even on one that froze holding it (SIGSTOP, a paused VM): a claim waits
  :data:`LOCK_TIMEOUT` at most, then is a "not now" for its record (:class:`NotYet`, never
  a dial), and the database ends the session of a holder idle mid-transaction for
  :data:`HOLD_LIMIT` (its transaction rolls back), which frees the lock. A refused claim
  says until when (the window's next opening, a cap's end) or, for a call slot, to look
  again shortly: a call ending at another daemon is not announced. :func:`taken` tells,
  without the lock, which records other daemons claimed already: no claim is wasted on them.
- **Time.** What claims, heartbeats, reaping and recovery compare is the database's clock
  (``clock_timestamp()``), never a host's: a daemon whose machine's clock is off neither
  lets more dials into the window nor judges a live daemon dead (:class:`DatabaseClock`).
- **Callbacks.** An outbox row belongs to the daemon that wrote it (``outbox.owner``); the
  rows of a daemon that is gone are delivered by the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, delete, func, insert, literal, select, text, update
from sqlalchemy import exc as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..clock import Clock, SystemClock
from ..errors import StoreInUse, StoreUnavailable
from ..rules.caps import DAY, Caps
from ..states import AttemptState, RecordState, SkipReason
from . import instances as inst
from .errors import translated
from .models import UtcDateTime, attempts, do_not_call, instances, outbox, records

__all__ = [
    "HOLD_LIMIT",
    "LOCK_TIMEOUT",
    "Claim",
    "Claimed",
    "ClusterBusy",
    "ClusterLimits",
    "DatabaseClock",
    "NotYet",
    "SharedTime",
    "Taken",
    "beat",
    "claim_dial",
    "join",
    "reap",
    "restamp",
    "shared_time",
    "taken",
]

# The advisory lock every claim takes (an arbitrary constant: "pinecall" in ASCII, folded).
CLAIM_LOCK = 0x70696E6563616C6C & 0x7FFFFFFFFFFFFFFF
# How soon a claim refused for want of a call slot (or of the lock) looks again.
SLOT_RETRY = 0.25
# The longest a daemon waits for the cluster's lock (it is held for milliseconds): then the
# claim is "not now", and reaping or recovery waits for the next beat.
LOCK_TIMEOUT = 1.0
# The longest a transaction holding the lock may sit idle between statements before the
# database ends its session (rolling it back, freeing the lock): a daemon frozen mid-claim
# holds up every other one this long at most. Far above the milliseconds a live daemon
# takes between two statements, even on a loaded machine.
HOLD_LIMIT = 2.0
# How long a daemon starting waits for the lock to join (a join is not "not now", as a claim
# is): a frozen holder is cut off before then.
JOIN_WAIT = HOLD_LIMIT + LOCK_TIMEOUT
_IN_FLIGHT = (AttemptState.DIALING.value, AttemptState.ACTIVE.value)
_HELD = (AttemptState.INTERRUPTED.value, AttemptState.UNKNOWN.value)
_CONTENT_SKIPS = frozenset(r.value for r in SkipReason if r.about_content)
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE: lock_timeout ran out


@dataclass(frozen=True, slots=True)
class ClusterLimits:
    """What every daemon together respects, as the claiming one is configured.

    ``margin``: how late after its stamp a dial may reach the platform (the claim's commit,
    the send). Each start counts for ``window + margin``, so the platform never sees more
    than ``max_calls_per_minute`` starts in a window; a dial that has not gone out within
    half the margin (the rest is for the send) is stamped again first (:func:`restamp`)."""

    max_concurrent: int
    max_calls_per_minute: int | None
    window: float
    hold: float  # seconds a dead daemon's number stays blocked
    caps: Caps
    margin: float = 0.0


@dataclass(frozen=True, slots=True)
class Claimed:
    """The intent is committed: dial. ``at``: the start it counts, stamped under the lock (a
    wait for the lock must not make it count earlier than the dial goes out), on the shared
    clock; ``since``: this process's monotonic time no later than the stamp, to tell how
    long ago it was without reading the shared clock (-inf: unknown)."""

    at: datetime
    since: float = -math.inf


@dataclass(frozen=True, slots=True)
class Taken:
    """Another daemon has (or had) the record: ``state`` and ``attempts`` as it left them."""

    state: RecordState
    attempts: int
    retry_at: datetime | None


@dataclass(frozen=True, slots=True)
class NotYet:
    """Not now: try again at ``until`` (``why``: what holds it). ``shared``: a limit of
    every daemon (the concurrency cap, the rate), not of this record: no other record would
    do better before ``until`` either. ``judged``: when it was decided, on the clock
    ``until`` is on (the shared one)."""

    until: datetime
    why: str
    shared: bool = False
    judged: datetime | None = field(default=None, compare=False)

    def wait(self, now: datetime) -> float:
        """Seconds to wait, from ``now`` (this process's clock): measured on the clock that
        judged, so a host whose clock is off waits as long as the others."""
        return max(0.0, (self.until - (self.judged or now)).total_seconds())


Claim = Claimed | Taken | NotYet


class ClusterBusy(StoreUnavailable):
    """Another daemon held the cluster's lock longer than :data:`LOCK_TIMEOUT` (frozen, most
    likely, until the database cuts it off): nothing was done; try again shortly."""


class SharedTime(Protocol):
    """The clock every daemon of a cluster reads, in SQL."""

    def now(self) -> ColumnElement[datetime]:
        """The current time, read by the statement it is part of."""
        ...


class DatabaseClock:
    """The database's clock: one for every host, whatever each machine's says."""

    def now(self) -> ColumnElement[datetime]:
        return func.clock_timestamp(type_=UtcDateTime())


@dataclass(frozen=True, slots=True)
class _Injected:
    clock: Clock

    def now(self) -> ColumnElement[datetime]:
        return literal(self.clock.now(), UtcDateTime())


def shared_time(clock: Clock) -> SharedTime:
    """The database's clock for a store on the system clock; an injected clock (a test's)
    otherwise, so that time a test moves moves for the cluster too."""
    return DatabaseClock() if isinstance(clock, SystemClock) else _Injected(clock)


async def join(
    engine: AsyncEngine, me: inst.Instance, time: SharedTime, *, expiry: timedelta
) -> tuple[list[inst.Instance], list[str]]:
    """Register ``me`` beside the live daemons; remove the dead ones. Returns them, and the
    ids of the daemons alive now (``me`` too)."""
    inst.running(me)
    with translated("registering this daemon"):
        async with engine.begin() as conn:
            await lock(conn, wait=JOIN_WAIT)
            now = (await conn.execute(select(time.now()))).scalar_one()
            me = inst.Instance(me.id, me.host, me.pid, me.boot_id, now, now, me.cluster)
            dead, alive = await _remove_dead(conn, me, expiry, proven=True)
            alone = await conn.execute(select(instances).where(~instances.c.cluster.is_(True)))
            for row in alone.all():
                # A daemon without [cluster] dials without claims: never beside it.
                raise StoreInUse(
                    f"store in use by {row.host}:{row.pid}, a daemon without [cluster] "
                    "enabled: stop it, or enable [cluster] there too"
                )
            await conn.execute(insert(instances).values(**inst.row(me)))
    return dead, alive


async def beat(engine: AsyncEngine, me: inst.Instance, time: SharedTime) -> bool:
    """Record that ``me`` is alive, on the shared clock; False if its row is gone (judged
    dead by another daemon)."""
    with translated("writing the heartbeat"):
        async with engine.begin() as conn:
            result = await conn.execute(
                update(instances).where(instances.c.id == me.id).values(heartbeat_at=time.now())
            )
    return result.rowcount > 0


async def reap(
    engine: AsyncEngine, me: inst.Instance, time: SharedTime, *, expiry: timedelta
) -> tuple[list[inst.Instance], list[str]]:
    """Remove the daemons whose heartbeat expired (on the shared clock); return them, and
    the ids of the daemons alive. Only then may their attempts in flight be recovered: a
    daemon that is merely slow keeps its calls."""
    with translated("looking for dead daemons"):
        async with engine.begin() as conn:
            await lock(conn)
            now = (await conn.execute(select(time.now()))).scalar_one()
            me = inst.Instance(me.id, me.host, me.pid, me.boot_id, me.started_at, now)
            dead, alive = await _remove_dead(conn, me, expiry, proven=False)
            # Callbacks nobody alive owns (the dead's, a cleanly stopped daemon's, rows from
            # before migration 0010) become this daemon's: one deliverer for each.
            orphaned = outbox.c.owner.is_(None) | outbox.c.owner.not_in(select(instances.c.id))
            await conn.execute(
                update(outbox).where(outbox.c.delivered_at.is_(None), orphaned).values(owner=me.id)
            )
            return dead, alive


async def lock(conn: AsyncConnection, *, wait: float = LOCK_TIMEOUT) -> None:
    """Take the cluster's lock until the end of ``conn``'s transaction: claims, reaping and
    recovery happen one at a time across daemons. Raises :class:`ClusterBusy` after
    ``wait`` seconds without it.

    Local to the transaction: the bound on the wait (for this lock and any row lock after
    it), and the limit on idling while holding the lock (:data:`HOLD_LIMIT`)."""
    limits = "SELECT set_config('lock_timeout', :wait, true), " + (
        "set_config('idle_in_transaction_session_timeout', :idle, true)"
    )
    await conn.execute(
        text(limits), {"wait": f"{wait * 1000:.0f}", "idle": f"{HOLD_LIMIT * 1000:.0f}"}
    )
    try:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK})
    except sa.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise ClusterBusy(
                f"another daemon held the cluster's lock over {wait:g}s (frozen?)"
            ) from exc
        raise


async def _remove_dead(
    conn: AsyncConnection, me: inst.Instance, expiry: timedelta, *, proven: bool
) -> tuple[list[inst.Instance], list[str]]:
    """``proven``: also a daemon whose process is provably gone (a start on its machine).
    Returns the dead, and the ids of the living (``me`` too)."""
    rows = (await conn.execute(select(instances).where(instances.c.id != me.id))).all()
    others = [inst.Instance(**row._mapping) for row in rows]
    dead = [other for other in others if other.dead(me, expiry, proven=proven)]
    if dead:
        await conn.execute(delete(instances).where(instances.c.id.in_([d.id for d in dead])))
    alive = sorted({me.id} | {o.id for o in others} - {d.id for d in dead})
    return dead, alive


async def claim_dial(
    engine: AsyncEngine,
    *,
    rows: tuple[dict[str, Any], dict[str, Any]],
    upsert_record: Any,
    limits: ClusterLimits,
    time: SharedTime,
    clock: Clock,
) -> Claim:
    """Commit the intent ``rows`` (the attempt, the record) if every daemon's limits allow it
    now; else say why not, changing nothing."""
    attempt, record = rows
    try:
        with translated("claiming a dial"):
            async with engine.begin() as conn:
                await lock(conn)
                since = clock.monotonic()  # the stamp below is read after this
                now = await _registered(conn, attempt["owner"], time)
                mine = await conn.execute(
                    select(attempts.c.dialed_at, attempts.c.state).where(
                        attempts.c.id == attempt["id"]
                    )
                )
                if (committed := mine.first()) is not None:
                    # Committed already, its answer lost with the connection: still ours to
                    # dial only if nothing happened to it since (when it was stamped is not
                    # known here: it is stamped again before the dial).
                    if committed.state == AttemptState.DIALING.value:
                        return Claimed(committed.dialed_at)
                    return Taken(RecordState.INTERRUPTED, attempt["number"], None)
                verdict = await _check(conn, attempt, limits, now)
                if verdict is not None:
                    return replace(verdict, judged=now) if isinstance(verdict, NotYet) else verdict
                await conn.execute(insert(attempts).values({**attempt, "dialed_at": now}))
                stamped = {**record, "created_at": now, "updated_at": now}
                await conn.execute(upsert_record, [stamped])
    except ClusterBusy:
        return _busy(clock)
    return Claimed(now, since)


async def restamp(
    engine: AsyncEngine,
    *,
    attempt_id: str,
    owner: str | None,
    limits: ClusterLimits,
    time: SharedTime,
    clock: Clock,
) -> Claim:
    """Move the start of a committed claim whose dial did not go out within ``limits.margin``
    to now: under the lock, and only if the rate window has room for it now, as a claim
    (else :class:`NotYet`: its old stamp keeps counting meanwhile). :class:`Taken` if the
    attempt is no longer in flight (recovered: this daemon was judged dead): never dial it."""
    try:
        with translated("stamping a dial again"):
            async with engine.begin() as conn:
                await lock(conn)
                since = clock.monotonic()
                now = await _registered(conn, owner, time)
                query = select(attempts.c.state, attempts.c.number).where(
                    attempts.c.id == attempt_id
                )
                found = (await conn.execute(query)).first()
                if found is None or found.state != AttemptState.DIALING.value:
                    return Taken(RecordState.INTERRUPTED, found.number if found else 0, None)
                verdict = await _rate(conn, limits, now, but=attempt_id)
                if verdict is not None:
                    return replace(verdict, judged=now)
                await conn.execute(
                    update(attempts).where(attempts.c.id == attempt_id).values(dialed_at=now)
                )
    except ClusterBusy:
        return _busy(clock)
    return Claimed(now, since)


def _busy(clock: Clock) -> NotYet:
    # Not now, for this record and every other: the lock is what each claim needs.
    now = clock.now()
    return NotYet(now + timedelta(seconds=SLOT_RETRY), "cluster lock busy", True, now)


async def _registered(conn: AsyncConnection, owner: str | None, time: SharedTime) -> datetime:
    """The shared clock's time, once ``owner`` is known to be alive. Raises
    :class:`StoreInUse` if it was judged dead (its calls recovered): it must not dial."""
    alive = select(instances.c.id).where(instances.c.id == owner).exists()
    now, registered = (await conn.execute(select(time.now(), alive))).one()
    if not registered:
        raise StoreInUse("this daemon's heartbeat expired and another daemon recovered its calls")
    return now


async def taken(engine: AsyncEngine, strategy: str, numbers: Mapping[str, int]) -> dict[str, Taken]:
    """Which of these records (id -> the attempt this daemon would make) the ledger shows
    claimed or finished already, without the lock: a claim of one of them would lose. (A
    record not listed may still be lost to a claim committed since.)"""
    query = select(
        records.c.record_id, records.c.state, records.c.attempts, records.c.retry_at,
        records.c.reason,
    ).where(records.c.strategy == strategy, records.c.record_id.in_(list(numbers)))  # fmt: skip
    with translated("reading claims"):
        async with engine.connect() as conn:
            found = (await conn.execute(query)).all()
    return {
        row.record_id: lost
        for row in found
        if (lost := _lost(row, numbers[row.record_id])) is not None
    }


def _lost(found: Any, number: int) -> Taken | None:
    """The record as the ledger has it (``found``), if attempt ``number`` of it cannot be
    claimed: it is finished, in a call, or that attempt was made."""
    state = RecordState(found.state)
    # A record skipped for its content and fixed since may be dialed (as alone).
    fixed = state is RecordState.SKIPPED and found.reason in _CONTENT_SKIPS
    finished = state.terminal and not fixed
    if finished or found.attempts >= number or state is RecordState.DIALING:
        return Taken(state, found.attempts, found.retry_at)
    return None


async def _check(
    conn: AsyncConnection, attempt: Mapping[str, Any], limits: ClusterLimits, now: datetime
) -> Taken | NotYet | None:
    found = (
        await conn.execute(
            select(records.c.state, records.c.attempts, records.c.retry_at, records.c.reason).where(
                records.c.strategy == attempt["strategy"],
                records.c.record_id == attempt["record_id"],
            )
        )
    ).first()
    if found is not None:
        if (lost := _lost(found, attempt["number"])) is not None:
            return lost
        if found.retry_at is not None and found.retry_at > now:
            return NotYet(found.retry_at, "retry")
    phone = attempt["phone"]
    # Another daemon's opt-out is here before this one's next read of the list.
    listed = select(do_not_call.c.phone).where(do_not_call.c.phone == phone)
    if (await conn.execute(listed)).first() is not None:
        return NotYet(now + timedelta(seconds=SLOT_RETRY), "do-not-call")
    busy = (
        select(attempts.c.id)
        .where(attempts.c.phone == phone, attempts.c.state.in_(_IN_FLIGHT))
        .limit(1)
    )
    if (await conn.execute(busy)).first() is not None:
        return NotYet(now + timedelta(seconds=SLOT_RETRY), "number in a call")
    if limits.hold:
        since = now - timedelta(seconds=limits.hold)
        held = select(func.max(attempts.c.ended_at)).where(
            attempts.c.phone == phone, attempts.c.state.in_(_HELD), attempts.c.ended_at > since
        )
        ended = (await conn.execute(held)).scalar()
        if ended is not None:
            return NotYet(ended + timedelta(seconds=limits.hold), "held: may still be in a call")
    # A dead daemon's calls may still be live at the platform: they hold their slot for the
    # hold time too, so the platform never sees more than the cap.
    occupied: ColumnElement[bool] = attempts.c.state.in_(_IN_FLIGHT)
    if limits.hold:
        since = now - timedelta(seconds=limits.hold)
        # Only a dead daemon's: a live one's unknown outcome holds its number, not a slot.
        dead = attempts.c.owner.is_(None) | attempts.c.owner.not_in(select(instances.c.id))
        occupied = occupied | (attempts.c.state.in_(_HELD) & (attempts.c.ended_at > since) & dead)
    in_flight = select(func.count()).where(occupied)
    if (await conn.execute(in_flight)).scalar_one() >= limits.max_concurrent:
        return NotYet(now + timedelta(seconds=SLOT_RETRY), "concurrency", shared=True)
    return await _rate(conn, limits, now) or await _check_caps(conn, phone, limits.caps, now)


async def _rate(
    conn: AsyncConnection, limits: ClusterLimits, now: datetime, *, but: str | None = None
) -> NotYet | None:
    """Whether one more start fits the rate window now (``but``: an attempt not to count,
    being stamped again). Each start counts for the window and the margin: its dial reaches
    the platform up to ``margin`` after the stamp."""
    if not limits.max_calls_per_minute:
        return None
    span = timedelta(seconds=limits.window + limits.margin)
    nth = (
        select(attempts.c.dialed_at)
        .where(attempts.c.dialed_at > now - span)
        .order_by(attempts.c.dialed_at.desc())
        .offset(limits.max_calls_per_minute - 1)
        .limit(1)
    )
    if but is not None:
        nth = nth.where(attempts.c.id != but)
    oldest = (await conn.execute(nth)).scalar()
    if oldest is None:
        return None
    return NotYet(oldest + span, "rate limit", shared=True)


async def _check_caps(
    conn: AsyncConnection, phone: str, caps: Caps, now: datetime
) -> NotYet | None:
    for cap, span, name in ((caps.per_24h, DAY, "24 h"), (caps.per_30d, 30 * DAY, "30 days")):
        if cap is None:
            continue
        since = now - timedelta(seconds=span)
        nth = (
            select(attempts.c.dialed_at)
            .where(attempts.c.phone == phone, attempts.c.dialed_at > since)
            .order_by(attempts.c.dialed_at.desc())
            .offset(cap - 1)
            .limit(1)
        )
        oldest = (await conn.execute(nth)).scalar()
        if oldest is not None:
            return NotYet(oldest + timedelta(seconds=span), f"cap: {cap} per {name}")
    if caps.min_gap:
        last = select(func.max(attempts.c.dialed_at)).where(attempts.c.phone == phone)
        latest = (await conn.execute(last)).scalar()
        if latest is not None and latest + timedelta(seconds=caps.min_gap) > now:
            return NotYet(latest + timedelta(seconds=caps.min_gap), "cap: minimum gap")
    if caps.cooldown_after_refusal:
        refused = select(func.max(attempts.c.dialed_at)).where(
            attempts.c.phone == phone, attempts.c.refused.is_(True)
        )
        latest = (await conn.execute(refused)).scalar()
        if latest is not None and latest + timedelta(seconds=caps.cooldown_after_refusal) > now:
            until = latest + timedelta(seconds=caps.cooldown_after_refusal)
            return NotYet(until, "cap: cool-down after a refusal")
    return None
