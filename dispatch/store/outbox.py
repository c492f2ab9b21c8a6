"""The outbox's rows: what a callback delivery needs, and the queries the delivery worker runs.

Rows are written by :class:`~dispatch.store.Store` in the same transaction as the outcome they
report; the worker in :mod:`dispatch.outbox` reads them with :func:`due`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from ..abc import CallResult
from ..record import Record
from .errors import translated
from .models import outbox

if TYPE_CHECKING:
    from ..abc import CallbackName

__all__ = ["Backlog", "Callback", "OutboxRow", "backlog", "due", "next_due"]


@dataclass(frozen=True, slots=True)
class Callback:
    """A callback to deliver: ``strategy.<name>(record, *args)``."""

    strategy: str
    name: CallbackName
    record: Record
    args: tuple[Any, ...] = ()

    def row(self, at: datetime) -> dict[str, Any]:
        args = [a.to_json() if isinstance(a, CallResult) else a for a in self.args]
        payload = {"record": self.record.to_json(), "args": args}
        return {
            "strategy": self.strategy,
            "record_id": self.record.id,
            "callback": self.name,
            "payload": json.dumps(payload),
            "created_at": at,
            "deliveries": 0,
            "next_at": at,
        }


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    deliveries: int
    callback: Callback
    created_at: datetime


def _callback(row: Any) -> Callback:
    payload = json.loads(row.payload)
    record = Record.from_json(payload["record"])
    name = cast("CallbackName", row.callback)
    args = payload["args"]
    if name == "on_result" and not row.strategy.startswith("webhook:"):  # (call_id, result)
        args = [args[0], CallResult.from_json(args[1])]
    return Callback(row.strategy, name, record, tuple(args))


def _heads() -> ColumnElement[bool]:
    """Undelivered rows that no earlier undelivered row of the same record precedes: the
    callbacks of one record are delivered in order."""
    earlier = aliased(outbox)
    blocked = (
        select(earlier.c.id)
        .where(
            and_(
                earlier.c.strategy == outbox.c.strategy,
                earlier.c.record_id == outbox.c.record_id,
                earlier.c.delivered_at.is_(None),
                earlier.c.id < outbox.c.id,
            )
        )
        .exists()
    )
    return and_(outbox.c.delivered_at.is_(None), ~blocked)


def _deliverable(owner: str | None) -> ColumnElement[bool]:
    """The heads ``owner`` delivers: all of them (one daemon), or, in a cluster, its own
    (the rows of daemons that are gone are adopted by one of the others: ``cluster.reap``)."""
    if owner is None:
        return _heads()
    return and_(_heads(), outbox.c.owner == owner)


async def due(
    engine: AsyncEngine, now: datetime, limit: int = 500, *, owner: str | None = None
) -> list[OutboxRow]:
    """The rows to deliver now, oldest first: heads of their record whose time has come
    (``owner``: of this daemon of a cluster, see :func:`_deliverable`)."""
    query = (
        select(outbox)
        .where(_deliverable(owner), outbox.c.next_at <= now)
        .order_by(outbox.c.id)
        .limit(limit)
    )
    with translated("reading the outbox"):
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    return [OutboxRow(row.id, row.deliveries, _callback(row), row.created_at) for row in rows]


async def next_due(engine: AsyncEngine, *, owner: str | None = None) -> datetime | None:
    """When the next deliverable row is due, or None if every callback was delivered."""
    query = select(func.min(outbox.c.next_at)).where(_deliverable(owner))
    with translated("reading the outbox"):
        async with engine.connect() as conn:
            value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
    return value


@dataclass(frozen=True, slots=True)
class Backlog:
    """The callbacks not delivered yet."""

    pending: int
    failing: int  # of which failed at least once
    oldest: datetime | None = None  # when the oldest of them was written


async def backlog(engine: AsyncEngine) -> Backlog:
    """The undelivered rows: one pass over the partial index of undelivered rows (the oldest
    is the lowest id, found in that index too)."""
    undelivered = outbox.c.delivered_at.is_(None)
    oldest = (
        select(outbox.c.created_at).where(undelivered).order_by(outbox.c.id).limit(1)
    ).scalar_subquery()
    query = select(func.count(), func.count().filter(outbox.c.deliveries > 0), oldest).where(
        undelivered
    )
    with translated("reading the outbox"):
        async with engine.connect() as conn:
            pending, failing, first = (await conn.execute(query)).one()
    return Backlog(int(pending), int(failing), first)


INSERT = outbox.insert()
DELIVERED = (
    update(outbox).where(outbox.c.id == bindparam("b_id")).values(delivered_at=bindparam("b_at"))
)
FAILED = (
    update(outbox)
    .where(outbox.c.id == bindparam("b_id"))
    .values(
        deliveries=bindparam("b_deliveries"),
        next_at=bindparam("b_next_at"),
        last_error=bindparam("b_error"),
    )
)
