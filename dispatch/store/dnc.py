"""The do-not-call list, read and edited directly: plain queries over an ``AsyncEngine``.

`dispatch dnc` edits the list from outside the daemon, so these functions do not go through
the store's group-commit writer: each one runs its own short transactions on the engine it is
handed (a :class:`~dispatch.store.Store`'s, opened, with its SQLite pragmas). They are safe to
run while a daemon writes to the same store: SQLite in WAL mode lets readers run beside the
writer, and each write transaction here is small enough (:data:`BATCH` rows) that the daemon's
writer, which waits for the lock (``busy_timeout``), never waits long.

Every driver error becomes a :class:`~dispatch.errors.StoreError` (or
:class:`~dispatch.errors.StoreUnavailable`) here, through :func:`translated`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Executable, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncResult

from ..errors import StoreError
from .errors import translated
from .models import do_not_call
from .store import DoNotCall

__all__ = ["BATCH", "Listed", "add", "listed", "reading", "remove"]

# Rows per write transaction: an import of 100,000 numbers commits 20 times, each holding
# SQLite's write lock for a few milliseconds, so a running daemon's commits slip in between.
BATCH = 5_000
# Phones per `IN (...)` list: well under SQLite's 32,766 bound parameters and asyncpg's 32,767.
_IN_LIMIT = 1_000


@dataclass(frozen=True, slots=True)
class Listed:
    """One number on the do-not-call list, as stored."""

    phone: str  # E.164
    added_at: datetime  # aware, UTC
    source: str  # what added it: "result", "import", "cli" ...
    strategy: str | None
    record_id: str | None
    reason: str | None

    def as_dict(self) -> dict[str, str | None]:
        """JSON-ready: ``added_at`` in ISO 8601."""
        return {
            "phone": self.phone,
            "added_at": self.added_at.isoformat(),
            "source": self.source,
            "strategy": self.strategy,
            "record_id": self.record_id,
            "reason": self.reason,
        }


async def add(
    engine: AsyncEngine, entries: Iterable[DoNotCall], *, at: datetime, batch: int = BATCH
) -> set[str]:
    """Put ``entries`` on the list, added ``at``; return the phones this call added.

    A number already listed keeps its row as it was (source, reason and time unchanged), and
    so does one listed by someone else (the daemon's opt-out) while this runs: it is not in
    the result. Of two entries for the same phone, the first wins. Entries are committed
    ``batch`` at a time, each batch in its own transaction: if this raises, the batches
    before were committed, and calling it again with the same entries adds the rest.

    Raises :class:`~dispatch.errors.StoreError` (:class:`~dispatch.errors.StoreUnavailable`
    when the database cannot be reached).
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    statement = _INSERT.get(engine.dialect.name)
    if statement is None:
        raise StoreError(f"the do-not-call list needs SQLite or PostgreSQL, not {engine.name!r}")
    added: set[str] = set()
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for entry in entries:
        row = entry.row(at)
        if row["phone"] in seen:
            continue
        seen.add(row["phone"])
        rows.append(row)
        if len(rows) >= batch:
            added |= await _insert(engine, statement, rows)
            rows = []
    if rows:
        added |= await _insert(engine, statement, rows)
    return added


async def _insert(
    engine: AsyncEngine, statement: Executable, rows: list[dict[str, Any]]
) -> set[str]:
    with translated("adding to the do-not-call list"):
        async with engine.begin() as conn:
            # RETURNING under ON CONFLICT DO NOTHING yields only the rows actually inserted.
            result = await conn.execute(statement, rows)
            return set(result.scalars())


async def remove(engine: AsyncEngine, phones: Collection[str]) -> set[str]:
    """Take ``phones`` (E.164) off the list, in one transaction; return those that were on it.

    Raises :class:`~dispatch.errors.StoreError`.
    """
    removed: set[str] = set()
    with translated("removing from the do-not-call list"):
        async with engine.begin() as conn:
            for chunk in _chunks(sorted(set(phones)), _IN_LIMIT):
                query = (
                    delete(do_not_call)
                    .where(do_not_call.c.phone.in_(chunk))
                    .returning(do_not_call.c.phone)
                )
                removed.update((await conn.execute(query)).scalars())
    return removed


async def listed(engine: AsyncEngine, phones: Collection[str] | None = None) -> list[Listed]:
    """The list ordered by phone: every number, or only those of ``phones`` that are on it.

    Raises :class:`~dispatch.errors.StoreError`.
    """
    if phones is None:
        async with reading(engine) as entries:
            return [entry async for entry in entries]
    found: list[Listed] = []
    with translated("reading the do-not-call list"):
        async with engine.connect() as conn:
            for chunk in _chunks(sorted(set(phones)), _IN_LIMIT):
                query = select(do_not_call).where(do_not_call.c.phone.in_(chunk))
                found.extend(_listed(row) for row in await conn.execute(query))
    return sorted(found, key=lambda entry: entry.phone)


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncIterator[Listed]]:
    """``async with reading(engine) as entries: async for entry in entries: ...``: every
    number on the list, ordered by phone, fetched :data:`BATCH` rows at a time as the caller
    consumes them, so a list of millions is never held in memory at once. One read
    transaction: the entries are one consistent view, whatever is written meanwhile.

    Raises :class:`~dispatch.errors.StoreError`, on entering and from the iteration; an
    error raised by the caller's own code in the block passes through untouched.
    """
    query = select(do_not_call).order_by(do_not_call.c.phone)
    with translated("reading the do-not-call list"):
        conn = await engine.connect()
    try:
        with translated("reading the do-not-call list"):
            result = await conn.stream(query)
        yield _entries(result)
    finally:
        with translated("reading the do-not-call list"):
            await conn.close()


async def _entries(result: AsyncResult[Any]) -> AsyncIterator[Listed]:
    while True:
        with translated("reading the do-not-call list"):
            rows = await result.fetchmany(BATCH)
        if not rows:
            return
        for row in rows:
            yield _listed(row)


def _listed(row: Any) -> Listed:
    return Listed(row.phone, row.added_at, row.source, row.strategy, row.record_id, row.reason)


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _insert_for(dialect: Any) -> Executable:
    insert = dialect.insert(do_not_call)
    statement: Executable = insert.on_conflict_do_nothing(
        index_elements=[do_not_call.c.phone]
    ).returning(do_not_call.c.phone)
    return statement


_INSERT = {"sqlite": _insert_for(sqlite), "postgresql": _insert_for(postgresql)}
