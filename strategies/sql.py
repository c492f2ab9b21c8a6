"""SqlStrategy: records from the due rows of a database table (PostgreSQL, MySQL/MariaDB, SQLite).

Each poll runs one query: the rows matching ``where`` whose ``due_column`` is empty or past and
that the write-back has not finished, streamed in pages of ``fetch_size``. The result is diffed
against the previous poll by row fingerprint, so a poll yields only new and changed rows, and
:class:`~dispatch.Removed` for rows that left the result (deleted, or no longer matching
``where``). A row that changes before its call is dialed as changed; one that leaves before it
is not dialed.

With an index that matches the query (see docs/configuration.md), a poll costs what the due rows
cost, not what the table holds.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    MetaData,
    Row,
    Select,
    Table,
    bindparam,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import Date, DateTime, String

from dispatch.abc import CallbackName, Malformed, PollItem, Removed, Strategy, StrategyContext
from dispatch.clock import Clock, SystemClock
from dispatch.errors import ConfigError, SourceError
from dispatch.record import Record
from dispatch.store import with_async_driver

from ._csvmap import Bound, Templates, check_template
from ._writeback import WriteBack, outcome_status, result_cells

__all__ = ["SqlStrategy", "WriteBack"]

logger = logging.getLogger(__name__)

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
}
# A row whose status cell holds one of these is not finished: it stays in the poll (a retry
# may be waiting for it). Any other status is an outcome the write-back wrote.
_UNFINISHED = ("", "dispatched")
# "dispatched" must fit whole; an outcome may be cut to fit (it stays an outcome).
_STATUS_WIDTH = len("dispatched")


@dataclass(frozen=True, slots=True)
class _View:
    """The table as reflected, and what the strategy reads and writes in it."""

    table: Table
    bound: Bound  # the templates bound to the selected columns, in their order
    query: Select[Any]
    due: Column[Any] | None
    naive_due: bool  # the due column holds UTC without a zone
    key: Column[Any] | None  # the id's column, for the write-back


class SqlStrategy(Strategy):
    """Records from the rows of ``table`` that are due, kept in step with the table.

    ``url`` is a SQLAlchemy URL (``postgresql://``, ``mysql://``, ``mariadb://``, ``sqlite:///``;
    the async driver is chosen for you) or an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` you
    own. ``table`` may be ``schema.table``.

    Rows map to records through templates over column names, as with the CSV strategy
    (``greeting="Hi {first_name}"``, ``metadata={"crm": "{crm_id}"}``); ``id`` defaults to the
    primary key, ``phone`` to the ``phone`` column, ``metadata`` to the whole row. Values are
    rendered as text (NULL as empty).

    Which rows: ``where`` is a SQL condition inserted as written (it comes from the operator's
    configuration, never from data), ``due_column`` a timestamp column: a row is due once it is
    NULL or not after now (a column without a time zone is read as UTC). Rows come oldest due
    first (where NULL sorts is the database's choice), then by id. With ``write_back``,
    outcomes are written into the row and a row with an outcome leaves the poll, so a large
    table is not read again and again. The table must have the write-back columns.

    A row that cannot be mapped is logged and yielded as :class:`~dispatch.Malformed`; a
    database error fails that poll (or that delivery, which the outbox retries) with
    :class:`~dispatch.errors.SourceError`, without the password; the hub polls again later.
    A missing table or column is a :class:`~dispatch.errors.ConfigError` naming it.
    """

    incremental = True

    def __init__(
        self,
        url: str | URL | AsyncEngine,
        table: str,
        *,
        name: str | None = None,
        id: str | None = None,
        phone: str = "{phone}",
        greeting: str | None = None,
        metadata: Mapping[str, str] | None = None,
        prompt_vars: Mapping[str, str] | None = None,
        from_: str | None = None,
        timezone: str | None = None,
        not_before: str | None = None,
        not_after: str | None = None,
        config: Mapping[str, str] | None = None,
        where: str | None = None,
        due_column: str | None = None,
        write_back: WriteBack | None = None,
        fetch_size: int = 5000,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(url, AsyncEngine):
            self._engine: AsyncEngine | None = url
            self._own_engine = False
            self.url = url.url
        else:
            parsed = with_async_driver(url, _DRIVERS)
            if parsed is None:
                raise ConfigError(
                    f"unsupported database in {str(url).partition(':')[0]!r}: use "
                    "postgresql://, mysql://, mariadb:// or sqlite:///"
                )
            self._engine, self._own_engine, self.url = None, True, parsed
        if fetch_size < 1:
            raise ValueError("fetch_size must be at least 1")
        schema, _, table_name = table.rpartition(".")
        super().__init__(name or table_name)
        self.table = table
        self._schema, self._table_name = schema or None, table_name
        self.templates = Templates.of(
            id=id,
            phone=phone,
            greeting=greeting,
            metadata=metadata,
            prompt_vars=prompt_vars,
            from_=from_,
            timezone=timezone,
            not_before=not_before,
            not_after=not_after,
            config=config,
            naive_utc=True,  # like due_column: a timestamp without a zone is UTC
        )
        self.where = where
        self.due_column = due_column
        self.write_back = write_back
        self.fetch_size = fetch_size
        self.clock = clock or SystemClock()
        self._view: _View | None = None
        self._rows: dict[str, int] = {}  # record id -> fingerprint of its row, as last polled

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            # MySQL shows TIMESTAMP columns in the session's time zone: make that UTC, as the
            # due time is compared in UTC.
            mysql = self.url.get_backend_name() in ("mysql", "mariadb")
            connect_args = {"init_command": "SET time_zone = '+00:00'"} if mysql else {}
            # pre_ping: a connection the server dropped between polls is replaced, not an error.
            self._engine = create_async_engine(
                self.url, pool_pre_ping=True, connect_args=connect_args
            )
        return self._engine

    async def open(self, context: StrategyContext | None = None) -> None:
        await super().open(context)
        try:
            await self._prepared()
        except SourceError as exc:  # the database may come up later; polls will say so
            logger.warning("sql.unreachable strategy=%s error=%s", self.name, exc)

    async def aclose(self) -> None:
        if self._own_engine and self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    # -- reading -----------------------------------------------------------------------------

    async def poll(self) -> list[PollItem]:
        view = await self._prepared()
        params: dict[str, Any] = {}
        if view.due is not None:
            now = self.clock.now()
            params["now"] = now.replace(tzinfo=None) if view.naive_due else now
        seen: dict[str, int] = {}
        items: list[PollItem] = []
        async with self._errors("reading"), self.engine.connect() as conn:
            query = view.query.execution_options(yield_per=self.fetch_size)
            result = await conn.stream(query, params)
            async for rows in result.partitions():
                self._apply(view.bound, rows, seen, items)
        items.extend(Removed(record_id) for record_id in self._rows if record_id not in seen)
        self._rows = seen  # only after a complete read: a failed poll changes nothing
        return items

    def _apply(
        self, bound: Bound, rows: Sequence[Row[Any]], seen: dict[str, int], items: list[PollItem]
    ) -> None:
        previous = self._rows
        id_index = bound.id_column
        for row in rows:
            try:
                fingerprint = hash(row)
            except TypeError:  # a JSON or array value
                fingerprint = hash(tuple(map(str, row)))
            if id_index is not None:
                # The common case, a row unchanged since the last poll, costs no rendering.
                value = row[id_index]
                record_id = "" if value is None else str(value).strip()
                if previous.get(record_id) == fingerprint and record_id not in seen:
                    seen[record_id] = fingerprint
                    continue
            cells = ["" if value is None else str(value).strip() for value in row]
            record_id = cells[id_index] if id_index is not None else _rendered_id(bound, cells)
            if not record_id:  # reported under a name that stays the same while the row does
                record_id = f"row:{zlib.crc32(chr(31).join(cells).encode()):08x}"
            if record_id in seen:
                logger.warning(
                    "sql.duplicate_id strategy=%s record=%s (an earlier row has this id; this one"
                    " is left out)",
                    self.name,
                    record_id,
                )
                continue
            seen[record_id] = fingerprint
            if previous.get(record_id) != fingerprint:
                items.append(self._map(bound, record_id, cells))

    def _map(self, bound: Bound, record_id: str, cells: list[str]) -> Record | Malformed:
        try:
            return bound.record(cells)
        except Exception as exc:  # a bad row: that row only
            reason = str(exc) or type(exc).__name__
            logger.warning(
                "sql.bad_row strategy=%s record=%s reason=%s", self.name, record_id, reason
            )
            phone = cells[bound.phone_column] if bound.phone_column is not None else ""
            return Malformed(record_id, reason, phone=phone)

    # -- the table ---------------------------------------------------------------------------

    async def _prepared(self) -> _View:
        if self._view is None:
            async with self._errors("reading the columns of"), self.engine.connect() as conn:
                table = await conn.run_sync(self._reflect)
            self._view = self._build(table)
        return self._view

    def _reflect(self, conn: Connection) -> Table:
        try:
            return Table(self._table_name, MetaData(), schema=self._schema, autoload_with=conn)
        except NoSuchTableError:
            raise ConfigError(f"strategy {self.name}: no table {self.table!r}") from None

    def _build(self, table: Table) -> _View:
        names = list(table.c.keys())

        def need(column: str, use: str) -> Column[Any]:
            if column not in table.c:
                raise ConfigError(
                    f"strategy {self.name}: table {self.table!r} has no column {column!r} "
                    f"({use}); it has {', '.join(names)}"
                )
            return table.c[column]

        templates = replace(self.templates, id=self.templates.id or _default_id(table))
        used: list[str] = []
        for text_ in templates.texts():
            for column in _fields(text_):
                need(column, f"template {text_!r}")
                used.append(column)
        due = need(self.due_column, "due_column") if self.due_column else None
        if due is not None and not isinstance(due.type, DateTime | Date):
            raise ConfigError(
                f"strategy {self.name}: due_column {due.name!r} is {due.type}, not a date or "
                "timestamp"
            )
        own = [need(c, "write_back") for c in self.write_back.columns()] if self.write_back else []
        if templates.metadata is None:  # the whole row, but for our own columns
            columns = [n for n in names if table.c[n] not in own]
        else:
            columns = [n for n in names if n in used]
        bound = templates.bind(columns)
        key = table.c[columns[bound.id_column]] if bound.id_column is not None else None
        if self.write_back and key is None:
            raise ConfigError(
                f"strategy {self.name}: write_back finds rows by id, so id must be one column, "
                f"like {{id}} (it is {templates.id!r})"
            )
        conditions: list[ColumnElement[bool]] = []
        if self.where:
            # Verbatim: a colon is not a bind parameter here (PostgreSQL casts, times in text).
            verbatim = self.where.replace(":", "\\:")
            conditions.append(text(f"({verbatim})"))  # type: ignore[arg-type]
        if due is not None:
            conditions.append(or_(due.is_(None), due <= bindparam("now", type_=due.type)))
        if self.write_back:
            status = table.c[self.write_back.status_column]
            length = status.type.length if isinstance(status.type, String) else None
            if length is not None and length < _STATUS_WIDTH:
                raise ConfigError(
                    f"strategy {self.name}: column {status.name!r} holds {length} characters; "
                    f"an outcome needs {_STATUS_WIDTH} or more"
                )
            conditions.append(or_(status.is_(None), status.in_(_UNFINISHED)))
        order = [key] if key is not None else list(table.primary_key.columns)
        # Oldest due first. The tie-breaker matters beyond determinism: ordered by the due
        # column alone, PostgreSQL may walk the whole index in order rather than fetch the
        # few due rows and sort them (80 ms instead of 1 ms on a million rows).
        if due is not None:
            order.insert(0, due)
        query = select(*(table.c[n] for n in columns)).where(*conditions).order_by(*order)
        naive = due is not None and not getattr(due.type, "timezone", False)
        return _View(table, bound, query, due, naive, key)

    # -- outcomes ----------------------------------------------------------------------------

    async def deliver(self, callback: CallbackName, record: Record, *args: Any) -> None:
        if self.write_back is not None:
            await self._write_back(callback, record, args)
        await super().deliver(callback, record, *args)

    async def _write_back(
        self, callback: CallbackName, record: Record, args: tuple[Any, ...]
    ) -> None:
        assert self.write_back is not None
        view = await self._prepared()
        assert view.key is not None
        table, spec = view.table, self.write_back
        values: dict[str, Any]
        if callback == "on_result":  # the answer's columns; the status stays
            values = dict(result_cells(args[1], spec.result_columns))
            if not values:
                return
        else:
            status, call_id = outcome_status(callback, args)
            values = {spec.status_column: status}
            if spec.call_id_column and call_id:
                values[spec.call_id_column] = call_id
            if spec.time_column:
                values[spec.time_column] = self.clock.now()
        try:
            key = _key_value(view.key, record.id)
        except ValueError:
            logger.warning(
                "sql.write_back_unmatched strategy=%s record=%s (not a value of column %s)",
                self.name,
                record.id,
                view.key.name,
            )
            return
        statement = (
            update(table)
            .where(view.key == key)
            .values({name: _fit(table.c[name], value) for name, value in values.items()})
        )
        async with self._errors(f"writing record {record.id} to"), self.engine.begin() as conn:
            result = await conn.execute(statement)
        if result.rowcount == 0:
            logger.warning(
                "sql.write_back_unmatched strategy=%s record=%s (no row with that id)",
                self.name,
                record.id,
            )

    @asynccontextmanager
    async def _errors(self, doing: str) -> AsyncIterator[None]:
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            raise SourceError(f"{doing} table {self.table!r} failed: {self._brief(exc)}") from exc

    def _brief(self, exc: BaseException) -> str:
        """The driver's own words (not SQLAlchemy's wrapper with the statement), first line,
        with the password blanked should a driver ever echo it."""
        cause = getattr(exc, "orig", None) or exc
        message = (str(cause).strip().splitlines() or [""])[0]
        if self.url.password:
            message = message.replace(str(self.url.password), "***")
        return f"{type(cause).__name__}: {message}" if message else type(cause).__name__

    def __repr__(self) -> str:
        url = self.url.render_as_string(hide_password=True)
        return f"SqlStrategy(name={self.name!r}, table={self.table!r}, url={url!r})"


def _default_id(table: Table) -> str:
    keys = list(table.primary_key.columns)
    if len(keys) == 1:
        return "{" + keys[0].name + "}"
    if "id" in table.c:
        return "{id}"
    raise ConfigError(
        f"table {table.name!r} has no single-column primary key and no id column: set id, "
        "a template over the columns that identify a row"
    )


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in check_template(template) if name]


def _rendered_id(bound: Bound, cells: list[str]) -> str:
    try:
        return bound.id(cells)
    except Exception:
        return ""


def _key_value(column: Column[Any], record_id: str) -> Any:
    """``record_id`` as the id column's Python type (an integer key compares with an int)."""
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return record_id
    return int(record_id) if kind is int else record_id


def _fit(column: Column[Any], value: str | datetime) -> Any:
    """``value`` as ``column`` can hold it: a time as a timestamp or as text, text cut to the
    column's length."""
    if isinstance(value, datetime):
        if isinstance(column.type, DateTime | Date):
            return value if getattr(column.type, "timezone", False) else value.replace(tzinfo=None)
        value = value.isoformat(timespec="seconds")
    length = column.type.length if isinstance(column.type, String) else None
    return value[:length] if length else value
