"""Table definitions. The schema itself is created only by the Alembic migrations in
``migrations/``; a test keeps these models and the migrations in agreement."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.sql.type_api import _BindProcessorType

__all__ = [
    "attempts",
    "controls",
    "do_not_call",
    "instances",
    "metadata",
    "outbox",
    "records",
    "sources",
]


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always reads back aware UTC datetimes.

    The store writes UTC; SQLite keeps no zone, so without this its values come back naive and
    every reader would have to patch them.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> _BindProcessorType[datetime] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite's DATETIME text, "2026-01-05 15:00:00.000000", as SQLAlchemy writes it (the
        # zone left out: the store writes UTC), by the C isoformat: a few datetimes a record,
        # and SQLAlchemy's %-formatting cost a twentieth of the hub's time per record.
        def process(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat(" ", "microseconds")[:26]

        return process

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per record the hub has acted on: the dedup key and the record's state. A terminal
# state here is final whatever the source later says.
records = Table(
    "records",
    metadata,
    Column("strategy", String(200), primary_key=True),
    Column("record_id", String(500), primary_key=True),
    Column("phone", String(32), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("reason", String(500)),
    Column("call_id", String(200)),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("retry_at", UtcDateTime()),  # when a `retry` record may be dialed again
    Index(None, "state"),
)

# One row per dial attempt: the intent is inserted (and committed) before agent.dial() is
# called, the outcome updates it. (strategy, record_id, number) is unique so an attempt can
# never be counted twice.
attempts = Table(
    "attempts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("strategy", String(200), nullable=False),
    Column("record_id", String(500), nullable=False),
    Column("number", Integer, nullable=False),
    Column("phone", String(32), nullable=False),
    Column("state", String(20), nullable=False),
    Column("call_id", String(200)),
    Column("reason", String(500)),
    Column("duration", Float),
    Column("dialed_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime()),
    Column("owner", String(64)),  # the instance that committed the intent (instances.id)
    Column("started_at", UtcDateTime()),  # when the call connected (the platform's word)
    Column("results", Text),  # JSON: the result tools called, [{"tool", "arguments", "at"}]
    Column("transcript", Text),  # JSON: the messages of the call, as the platform sent them
    Column("evidence", Text),  # JSON: what the calling rules saw at the dial (migration 0008)
    Column("refused", Boolean),  # the callee refused: the number's cool-down starts
    UniqueConstraint("strategy", "record_id", "number"),
    Index(None, "phone"),
    Index(None, "state"),
    Index(None, "dialed_at"),  # the rate window of a cluster's claims (migration 0010)
)

# Strategy callbacks waiting to be delivered. A row is inserted in the same transaction as the
# outcome it reports, so an outcome is never committed without its callback; delivery is at
# least once, in id order per record, retried with backoff until it succeeds.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("strategy", String(200), nullable=False),
    Column("record_id", String(500), nullable=False),
    Column("callback", String(40), nullable=False),
    Column("payload", Text, nullable=False),  # JSON: {"record": {...}, "args": [...]}
    Column("created_at", UtcDateTime(), nullable=False),
    Column("deliveries", Integer, nullable=False, default=0),  # failed tries so far
    Column("next_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime()),
    Column("last_error", String(500)),
    Column("owner", String(64)),  # the daemon that wrote it (instances.id; migration 0010)
    # The worker walks the undelivered rows in id order (migration 0005 says why).
    Index(
        "ix_outbox_undelivered",
        "id",
        sqlite_where=text("delivered_at IS NULL"),
        postgresql_where=text("delivered_at IS NULL"),
    ),
    Index(None, "strategy", "record_id", "id"),
)

# What the running hub last saw of each strategy: records queued in memory, which the store
# does not otherwise know about (they have no row until their first attempt or skip).
# Written after every poll; read by `dispatch status`.
sources = Table(
    "sources",
    metadata,
    Column("strategy", String(200), primary_key=True),
    Column("pending", Integer, nullable=False),  # admitted, waiting for a slot or the limiter
    Column("waiting", Integer, nullable=False),  # waiting for a retry delay or not_before
    Column("waiting_reasons", Text),  # JSON: {reason: count} of the waiting records
    Column("polled_at", UtcDateTime(), nullable=False),
)

# The daemons using this store: identity and heartbeat. A daemon registers on start, beats
# every few seconds and deletes its row on a clean stop; a row whose heartbeat expired (or
# whose process is provably gone) belongs to a dead daemon, whose in-flight attempts the next
# one recovers. With one daemon per store (SQLite, or PostgreSQL without a cluster), a second
# one is refused while the first one's heartbeat is fresh.
instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("boot_id", String(64)),  # with host: the same machine since the same boot
    Column("started_at", UtcDateTime(), nullable=False),
    Column("heartbeat_at", UtcDateTime(), nullable=False),
    Column("cluster", Boolean),  # runs with [cluster] enabled (migration 0010)
)

# Numbers never to be dialed again, shared by every strategy: an opt-out result adds the
# callee's number (source "result"); an operator may add others.
do_not_call = Table(
    "do_not_call",
    metadata,
    Column("phone", String(32), primary_key=True),  # E.164
    Column("added_at", UtcDateTime(), nullable=False),
    Column("source", String(40), nullable=False),  # what added it: result, import, cli ...
    Column("strategy", String(200)),
    Column("record_id", String(500)),
    Column("attempt_id", String(64)),  # the attempt whose result added it
    Column("reason", String(500)),
)

# Operators' pause flags (`dispatch pause` / `dispatch resume`, migration 0009): a row per
# paused strategy, "*" for every strategy. The hub dials no new record of a paused strategy.
controls = Table(
    "controls",
    metadata,
    Column("strategy", String(200), primary_key=True),  # a strategy's name, or "*": all of them
    Column("paused_at", UtcDateTime(), nullable=False),
    Column("reason", String(500)),
)
