"""The store's error boundary: every driver and OS error becomes a :class:`StoreError`, here.

Everything that talks to the database (the writer, reads, migrations, the instance registry,
``dispatch status``) goes through :func:`translated`, so no raw ``ConnectionRefusedError`` or
asyncpg exception escapes the store, and retry code can tell a transient outage
(:class:`StoreUnavailable`: hold the write, try again) from a permanent refusal (a plain
:class:`StoreError`: trying again fails the same way).

Messages name the driver's error without the SQL or its parameters (phone numbers) and without
the URL's password.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa

from ..errors import StoreError, StoreUnavailable

__all__ = ["DRIVER_ERRORS", "brief", "store_error", "translated"]

# What may come out of SQLAlchemy and its async drivers. asyncpg raises OSError (refused,
# reset, timed out) raw from connect(); everything else reaches us wrapped by SQLAlchemy.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (sa.SQLAlchemyError, OSError, sqlite3.Error)

# SQLSTATE classes that mean "not now" rather than "never": connection exceptions (08),
# insufficient resources (53), operator intervention such as a server shutting down or a
# terminated backend (57), serialization failures and deadlocks (40), lock not available.
_TRANSIENT_SQLSTATES = ("08", "53", "57", "40", "55P03", "58")


# SQLite result codes that mean "not now": busy, locked, out of memory, read-only (a remount),
# I/O error, disk full, cannot open the file, locking protocol. "no such table" is not one.
_TRANSIENT_SQLITE = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage (try again later) rather than a refusal."""
    if isinstance(exc, OSError | sa.DisconnectionError | sa.TimeoutError):
        return True
    if isinstance(exc, sa.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, sqlite3.Error):
            return _sqlite_transient(exc.orig)
        if isinstance(exc, sa.OperationalError | sa.InterfaceError):
            return True  # PostgreSQL: the connection is gone or cannot be made
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES)
    return isinstance(exc, sqlite3.Error) and _sqlite_transient(exc)


def _sqlite_transient(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # no code: only the message is left to tell
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in _TRANSIENT_SQLITE


def brief(exc: BaseException) -> str:
    """The driver's own words, first line only: no SQL, no parameters."""
    inner = exc.orig if isinstance(exc, sa.DBAPIError) and exc.orig is not None else exc
    if isinstance(inner, OSError) and inner.strerror:
        text = inner.strerror
    else:
        text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    name = type(inner).__name__
    return f"{name}: {text}" if text else name


def store_error(exc: BaseException, doing: str) -> StoreError:
    """The :class:`StoreError` (or :class:`StoreUnavailable`) for a driver error."""
    if isinstance(exc, StoreError):
        return exc
    if is_transient(exc):
        return StoreUnavailable(f"store unreachable while {doing} ({brief(exc)})")
    return StoreError(f"store refused {doing} ({brief(exc)})")


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """Turn driver and OS errors raised inside the block into store errors (chained)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise store_error(exc, doing) from exc
