"""Operators' pause flags, read and written directly: plain queries over an ``AsyncEngine``.

`dispatch pause` and `dispatch resume` set and clear the flags from outside the daemon, and a
running hub reads them (:func:`paused`) at most once per poll interval, so, like
:mod:`dispatch.store.dnc`, these functions bypass the store's group-commit writer: each runs one
short transaction on the engine it is handed. A flag names one strategy, or :data:`EVERY`
(``"*"``) for all of them; while a strategy is paused, the hub dials none of its records (calls
already in flight finish).

Every driver error becomes a :class:`~dispatch.errors.StoreError` (or
:class:`~dispatch.errors.StoreUnavailable`) here, through :func:`translated`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import StoreError
from .errors import translated
from .models import controls

__all__ = ["EVERY", "Pause", "is_paused", "pause", "paused", "resume"]

EVERY = "*"  # the flag that pauses every strategy
_REASON_MAX = 500  # controls.reason's size: a longer reason is cut, not refused


@dataclass(frozen=True, slots=True)
class Pause:
    """One pause flag, as stored."""

    strategy: str  # a strategy's name, or EVERY
    paused_at: datetime  # aware, UTC
    reason: str | None


def is_paused(flags: dict[str, Pause], strategy: str) -> Pause | None:
    """The flag that pauses ``strategy`` among ``flags`` (its own first, else :data:`EVERY`'s),
    or None when it may dial."""
    return flags.get(strategy) or flags.get(EVERY)


async def pause(
    engine: AsyncEngine, strategy: str = EVERY, *, at: datetime, reason: str | None = None
) -> Pause | None:
    """Pause ``strategy`` (:data:`EVERY`: all of them) from ``at``; return the flag it had
    before, or None if it was not paused.

    Pausing a paused strategy again keeps its ``paused_at`` and replaces its reason (with
    ``reason=None``, keeps it). A reason longer than the column is cut to fit.

    Raises :class:`ValueError` for an empty name, :class:`~dispatch.errors.StoreError`
    (:class:`~dispatch.errors.StoreUnavailable` when the database cannot be reached).
    """
    if not strategy:
        raise ValueError("a strategy name cannot be empty")
    statement = _UPSERT.get(engine.dialect.name)
    if statement is None:
        raise StoreError(f"pause flags need SQLite or PostgreSQL, not {engine.name!r}")
    reason = reason[:_REASON_MAX] if reason else None
    with translated("pausing"):
        # Read, then write, in two transactions: on SQLite a read transaction that turns
        # into a write fails at once ("database is locked") if the daemon committed since,
        # where a transaction that writes first waits for its turn.
        async with engine.connect() as conn:
            query = select(controls).where(controls.c.strategy == strategy)
            before = (await conn.execute(query)).first()
        async with engine.begin() as conn:
            row = {"strategy": strategy, "paused_at": at, "reason": reason}
            await conn.execute(statement, row)
    return None if before is None else _pause(before)


async def resume(engine: AsyncEngine, strategy: str | None = None) -> list[Pause]:
    """Clear the flag of ``strategy`` (:data:`EVERY` is a flag like any other), or every flag
    when ``strategy`` is None; return the flags cleared, by name.

    Clearing one strategy's flag does not resume it while :data:`EVERY` is set.

    Raises :class:`~dispatch.errors.StoreError`.
    """
    query = delete(controls).returning(*controls.c)
    if strategy is not None:
        query = query.where(controls.c.strategy == strategy)
    with translated("resuming"):
        async with engine.begin() as conn:
            rows = (await conn.execute(query)).all()
    return sorted((_pause(row) for row in rows), key=lambda flag: flag.strategy)


async def paused(engine: AsyncEngine) -> dict[str, Pause]:
    """Every flag set, by strategy name (:data:`EVERY` included when set).

    Raises :class:`~dispatch.errors.StoreError`.
    """
    with translated("reading the pause flags"):
        async with engine.connect() as conn:
            rows = (await conn.execute(select(controls))).all()
    return {row.strategy: _pause(row) for row in rows}


def _pause(row: Any) -> Pause:
    return Pause(row.strategy, row.paused_at, row.reason)


def _upsert_for(dialect: Any) -> Executable:
    insert = dialect.insert(controls)
    # Paused already: the first pause's time stands, a new reason replaces the old one.
    statement: Executable = insert.on_conflict_do_update(
        index_elements=[controls.c.strategy],
        set_={"reason": func.coalesce(insert.excluded.reason, controls.c.reason)},
    )
    return statement


_UPSERT = {"sqlite": _upsert_for(sqlite), "postgresql": _upsert_for(postgresql)}
