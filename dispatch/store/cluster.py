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
  - the rate: fewer than ``max_calls_per_minute`` dial starts in the sliding window;
  - the number's caps (per 24 h, per 30 days, minimum gap, cool-down after a refusal).

  The lock is held for a handful of indexed queries. No daemon waits on another for long,
  even on one that froze holding it (SIGSTOP, a paused VM): a claim waits
  :data:`LOCK_TIMEOUT` at most, then is a "not now" for its record (:class:`NotYet`, never
  a dial), and the database ends the session of a holder idle mid-transaction for
  :data:`HOLD_LIMIT` (its transaction rolls back), which frees the lock. A refused claim
  says until when (the window's next opening, a cap's end) or, for a call slot, to look
  again shortly: a call ending at another daemon is not announced.
- **Callbacks.** An outbox row belongs to the daemon that wrote it (``outbox.owner``); the
  rows of a daemon that is gone are delivered by the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, text, update
from sqlalchemy import exc as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..clock import Clock
from ..errors import StoreInUse, StoreUnavailable
from ..rules.caps import DAY, Caps
from ..states import AttemptState, RecordState, SkipReason
from . import instances as inst
from .errors import translated
from .models import attempts, do_not_call, instances, outbox, records

__all__ = [
    "HOLD_LIMIT",
    "LOCK_TIMEOUT",
    "Claim",
    "Claimed",
    "ClusterBusy",
    "ClusterLimits",
    "NotYet",
    "Taken",
    "claim_dial",
    "join",
    "reap",
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
# A start at or after this time needs the lock: a daemon joining waits this long for it (a
# frozen holder is cut off before), where a claim would give up.
JOIN_WAIT = HOLD_LIMIT + LOCK_TIMEOUT
_IN_FLIGHT = (AttemptState.DIALING.value, AttemptState.ACTIVE.value)
_HELD = (AttemptState.INTERRUPTED.value, AttemptState.UNKNOWN.value)
_CONTENT_SKIPS = frozenset(r.value for r in SkipReason if r.about_content)
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE: lock_timeout ran out


@dataclass(frozen=True, slots=True)
class ClusterLimits:
    """What every daemon together respects, as the claiming one is configured."""

    max_concurrent: int
    max_calls_per_minute: int | None
    window: float
    hold: float  # seconds a dead daemon's number stays blocked
    caps: Caps


@dataclass(frozen=True, slots=True)
class Claimed:
    """The intent is committed: dial. ``at``: the start it counts, stamped under the lock (a
    wait for the lock must not make it count earlier than the dial goes out)."""

    at: datetime


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
    do better before ``until`` either."""

    until: datetime
    why: str
    shared: bool = False


Claim = Claimed | Taken | NotYet


class ClusterBusy(StoreUnavailable):
    """Another daemon held the cluster's lock longer than :data:`LOCK_TIMEOUT` (frozen, most
    likely, until the database cuts it off): nothing was done; try again shortly."""


async def join(engine: AsyncEngine, me: inst.Instance, *, expiry: timedelta) -> list[inst.Instance]:
    """Register ``me`` beside the live daemons; remove (and return) the dead ones."""
    inst.running(me)
    with translated("registering this daemon"):
        async with engine.begin() as conn:
            await lock(conn, wait=JOIN_WAIT)
            dead = await _remove_dead(conn, me, expiry, proven=True)
            alone = await conn.execute(select(instances).where(~instances.c.cluster.is_(True)))
            for row in alone.all():
                # A daemon without [cluster] dials without claims: never beside it.
                raise StoreInUse(
                    f"store in use by {row.host}:{row.pid}, a daemon without [cluster] "
                    "enabled: stop it, or enable [cluster] there too"
                )
            await conn.execute(insert(instances).values(**inst.row(me)))
    return dead


async def reap(engine: AsyncEngine, me: inst.Instance, now: datetime, *,
               expiry: timedelta) -> list[inst.Instance]:  # fmt: skip
    """Remove the daemons whose heartbeat expired; return them. Only then may their
    attempts in flight be recovered: a daemon that is merely slow keeps its calls."""
    me = inst.Instance(me.id, me.host, me.pid, me.boot_id, me.started_at, now)
    with translated("looking for dead daemons"):
        async with engine.begin() as conn:
            await lock(conn)
            dead = await _remove_dead(conn, me, expiry, proven=False)
            # Callbacks nobody alive owns (the dead's, a cleanly stopped daemon's, rows from
            # before migration 0010) become this daemon's: one deliverer for each.
            orphaned = outbox.c.owner.is_(None) | outbox.c.owner.not_in(select(instances.c.id))
            await conn.execute(
                update(outbox).where(outbox.c.delivered_at.is_(None), orphaned).values(owner=me.id)
            )
            return dead


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
) -> list[inst.Instance]:
    """``proven``: also a daemon whose process is provably gone (a start on its machine)."""
    rows = (await conn.execute(select(instances).where(instances.c.id != me.id))).all()
    others = [inst.Instance(**row._mapping) for row in rows]
    dead = [other for other in others if other.dead(me, expiry, proven=proven)]
    if dead:
        await conn.execute(delete(instances).where(instances.c.id.in_([d.id for d in dead])))
    return dead


async def claim_dial(
    engine: AsyncEngine,
    *,
    rows: tuple[dict[str, Any], dict[str, Any]],
    upsert_record: Any,
    limits: ClusterLimits,
    clock: Clock,
) -> Claim:
    """Commit the intent ``rows`` (the attempt, the record) if every daemon's limits allow it
    now; else say why not, changing nothing."""
    attempt, record = rows
    try:
        return await _claim(engine, attempt, record, upsert_record, limits, clock)
    except ClusterBusy:
        # Not now, for this record and every other: the lock is what each claim needs.
        later = clock.now() + timedelta(seconds=SLOT_RETRY)
        return NotYet(later, "cluster lock busy", shared=True)


async def _claim(
    engine: AsyncEngine,
    attempt: dict[str, Any],
    record: dict[str, Any],
    upsert_record: Any,
    limits: ClusterLimits,
    clock: Clock,
) -> Claim:
    with translated("claiming a dial"):
        async with engine.begin() as conn:
            await lock(conn)
            now = clock.now()
            me = select(instances.c.id).where(instances.c.id == attempt["owner"])
            if (await conn.execute(me)).first() is None:
                # Judged dead by the others (its calls recovered): it must not dial again.
                raise StoreInUse(
                    "this daemon's heartbeat expired and another daemon recovered its calls"
                )
            mine = await conn.execute(
                select(attempts.c.dialed_at, attempts.c.state).where(attempts.c.id == attempt["id"])
            )
            if (committed := mine.first()) is not None:
                # Committed already, its answer lost with the connection: still ours to dial
                # only if nothing happened to it since.
                if committed.state == AttemptState.DIALING.value:
                    return Claimed(committed.dialed_at)
                return Taken(RecordState.INTERRUPTED, attempt["number"], None)
            verdict = await _check(conn, attempt, limits, now)
            if verdict is not None:
                return verdict
            await conn.execute(insert(attempts).values({**attempt, "dialed_at": now}))
            stamped = {**record, "created_at": now, "updated_at": now}
            await conn.execute(upsert_record, [stamped])
    return Claimed(now)


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
        state = RecordState(found.state)
        taken = Taken(state, found.attempts, found.retry_at)
        # A record skipped for its content and fixed since may be dialed (as alone).
        fixed = state is RecordState.SKIPPED and found.reason in _CONTENT_SKIPS
        finished = state.terminal and not fixed
        if finished or found.attempts >= attempt["number"] or state is RecordState.DIALING:
            return taken
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
    if limits.max_calls_per_minute:
        since = now - timedelta(seconds=limits.window)
        nth = (
            select(attempts.c.dialed_at)
            .where(attempts.c.dialed_at > since)
            .order_by(attempts.c.dialed_at.desc())
            .offset(limits.max_calls_per_minute - 1)
            .limit(1)
        )
        oldest = (await conn.execute(nth)).scalar()
        if oldest is not None:
            return NotYet(oldest + timedelta(seconds=limits.window), "rate limit", shared=True)
    return await _check_caps(conn, phone, limits.caps, now)


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
