"""SqlStrategy against real SQLite, PostgreSQL and MariaDB databases (one suite, every backend)."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, delete, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dispatch import CallResult, DispatchHub, Malformed, Record, Removed
from dispatch.errors import ConfigError, SourceError
from dispatch.testing import ManualClock, ScriptedAgent
from strategies.sql import SqlStrategy, WriteBack
from tests.conftest import fetch
from tests.support import PHONES

pytestmark = pytest.mark.anyio

WALL = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
metadata = MetaData()
leads = Table(
    "leads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("phone", String(32)),
    Column("first_name", String(40)),
    Column("crm_ref", String(40)),
    Column("status", String(20)),
    Column("tag", String(8)),
    Column("call_after", DateTime),
    Column("dispatch_status", String(60)),
    Column("dispatch_call_id", String(64)),
    Column("dispatch_at", DateTime),
    Column("appointment", String(20)),
    Column("notes", String(200)),
)
OUTCOME = WriteBack(call_id_column="dispatch_call_id", time_column="dispatch_at")


class Crm:
    """The operator's side of the table: rows go in and change behind the strategy's back."""

    def __init__(self, url: str, engine: AsyncEngine) -> None:
        self.url = url
        self.engine = engine

    async def add(self, *rows: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(leads), list(rows))

    async def change(self, lead_id: int, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sql_update(leads).where(leads.c.id == lead_id).values(**values))

    async def remove(self, lead_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(leads).where(leads.c.id == lead_id))

    async def row(self, lead_id: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(leads).where(leads.c.id == lead_id))
            return dict(result.mappings().one())


@pytest.fixture
async def crm(any_sql_url: str) -> AsyncIterator[Crm]:
    engine = create_async_engine(SqlStrategy(any_sql_url, "leads").url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield Crm(any_sql_url, engine)
    finally:
        await engine.dispose()


def lead(n: int, **values: Any) -> dict[str, Any]:
    # Every row names every column: an insert of many rows takes its columns from the first.
    row = {"id": n, "phone": PHONES[n], "first_name": f"Name{n}", "status": "new"}
    return {"crm_ref": None, "call_after": None, **row, **values}


async def polled(strategy: SqlStrategy) -> list[Any]:
    with anyio.fail_after(10):
        return await strategy.poll()


async def test_due_rows_are_mapped_by_templates_and_later_rows_come_when_due(crm: Crm) -> None:
    clock = ManualClock(wall=WALL)
    await crm.add(
        lead(1),  # no time: due now
        lead(2, call_after=datetime(2026, 11, 24, 14, 0)),
        lead(3, call_after=datetime(2026, 11, 24, 16, 0)),  # in an hour
        lead(4, status="cancelled"),
    )
    strategy = SqlStrategy(
        crm.url,
        "leads",
        greeting="Hi {first_name}",
        metadata={"name": "{first_name}", "lead": "{id}"},
        where="status = 'new'",
        due_column="call_after",
        clock=clock,
    )
    await strategy.open()
    try:
        first = sorted(await polled(strategy), key=lambda r: r.id)  # where NULL sorts varies
        assert [r.id for r in first] == ["1", "2"]
        assert first[0] == Record(
            id="1",
            phone=PHONES[1],
            greeting="Hi Name1",
            metadata={"name": "Name1", "lead": "1"},
        )
        assert await polled(strategy) == []

        clock.advance(3600)

        assert [r.id for r in await polled(strategy)] == ["3"]
    finally:
        await strategy.aclose()


async def test_a_timestamp_without_a_zone_is_utc_in_a_time_template(crm: Crm) -> None:
    # Like due_column: a DATETIME / TIMESTAMP WITHOUT TIME ZONE column holds UTC.
    await crm.add(lead(1, call_after=datetime(2026, 11, 24, 14, 0)), lead(2))
    strategy = SqlStrategy(crm.url, "leads", not_after="{call_after}")
    try:
        timed, untimed = sorted(await polled(strategy), key=lambda r: r.id)
    finally:
        await strategy.aclose()
    assert isinstance(timed, Record)
    assert timed.not_after == datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    assert isinstance(untimed, Record)
    assert untimed.not_after is None


async def test_a_poll_yields_only_new_changed_and_removed_rows(crm: Crm) -> None:
    await crm.add(lead(1), lead(2), lead(3))
    strategy = SqlStrategy(crm.url, "leads", where="status = 'new'")
    try:
        assert len(await polled(strategy)) == 3

        await crm.add(lead(4))
        await crm.change(2, phone=PHONES[20])
        await crm.change(3, status="cancelled")
        await crm.remove(1)
        items = await polled(strategy)

        records = [i for i in items if isinstance(i, Record)]
        assert [(r.id, r.phone) for r in records] == [("2", PHONES[20]), ("4", PHONES[4])]
        assert sorted(i.id for i in items if isinstance(i, Removed)) == ["1", "3"]
        assert await polled(strategy) == []
    finally:
        await strategy.aclose()


async def test_write_back_records_outcomes_and_a_finished_row_leaves_the_poll(crm: Crm) -> None:
    clock = ManualClock(wall=WALL)
    await crm.add(lead(1), lead(2), lead(3))
    strategy = SqlStrategy(crm.url, "leads", write_back=OUTCOME, clock=clock)
    delivered: list[tuple[str, ...]] = []
    strategy.on_completed = lambda record, call_id, reason: delivered.append((record.id, reason))
    try:
        one, two, three = await polled(strategy)
        assert "dispatch_status" not in one.metadata  # our own columns are not the row's data

        await strategy.deliver("on_dispatched", one, "call-1")
        await strategy.deliver("on_dispatched", two, "call-2")
        await strategy.deliver("on_completed", two, "call-2", "hangup")
        await strategy.deliver("on_failed", three, "busy")

        assert delivered == [("2", "hangup")]  # the user's callback still runs
        row = await crm.row(2)
        assert (row["dispatch_status"], row["dispatch_call_id"]) == ("completed: hangup", "call-2")
        assert row["dispatch_at"].replace(tzinfo=None) == WALL.replace(tzinfo=None)
        assert (await crm.row(3))["dispatch_status"] == "failed: busy"
        assert (await crm.row(1))["dispatch_status"] == "dispatched"
        # Row 1 is still in a call (or waiting for a retry): it stays; the finished ones leave.
        assert await polled(strategy) == [Removed("2"), Removed("3")]
        assert await polled(strategy) == []
    finally:
        await strategy.aclose()


async def test_results_are_written_into_their_columns_beside_an_operator_edit(crm: Crm) -> None:
    await crm.add(lead(1))
    spec = WriteBack(result_columns={"status": "appointment", "notes": "notes"})
    strategy = SqlStrategy(crm.url, "leads", write_back=spec)
    answer = CallResult("confirm_appointment", {"status": "reschedule", "notes": "after 5"}, WALL)
    try:
        (one,) = await polled(strategy)
        await strategy.deliver("on_dispatched", one, "call-1")
        await crm.change(1, first_name="Augusta", status="vip")  # the operator, meanwhile
        await strategy.deliver("on_result", one, "call-1", answer)
        row = await crm.row(1)
        assert (row["appointment"], row["notes"], row["dispatch_status"]) == (
            "reschedule",
            "after 5",
            "dispatched",  # a result leaves the status alone
        )
        assert (row["first_name"], row["status"]) == ("Augusta", "vip")
    finally:
        await strategy.aclose()


async def test_a_failed_write_back_raises_for_the_outbox_to_retry_and_long_text_is_cut(
    crm: Crm,
) -> None:
    await crm.add(lead(1))
    strategy = SqlStrategy(crm.url, "leads", write_back=OUTCOME)
    try:
        (one,) = await polled(strategy)
        async with crm.engine.begin() as conn:  # the table is away for maintenance
            await conn.exec_driver_sql("ALTER TABLE leads RENAME TO leads_old")
        with pytest.raises(SourceError, match="writing record 1 to table 'leads' failed"):
            await strategy.deliver("on_failed", one, "unknown: " + "no word from the platform " * 5)
        async with crm.engine.begin() as conn:
            await conn.exec_driver_sql("ALTER TABLE leads_old RENAME TO leads")

        await strategy.deliver("on_failed", one, "unknown: " + "no word from the platform " * 5)

        status = (await crm.row(1))["dispatch_status"]
        assert status == ("failed: unknown: " + "no word from the platform " * 5)[:60]
    finally:
        await strategy.aclose()


async def test_a_row_that_cannot_be_mapped_is_malformed_and_the_others_are_read(
    crm: Crm, caplog: pytest.LogCaptureFixture
) -> None:
    await crm.add(lead(1, crm_ref="A-1"), lead(2, crm_ref=None), lead(3, crm_ref="A-3"))
    strategy = SqlStrategy(crm.url, "leads", id="{crm_ref}", metadata={})
    try:
        with caplog.at_level(logging.WARNING, logger="strategies.sql"):
            items = await polled(strategy)

        assert [i.id for i in items if isinstance(i, Record)] == ["A-1", "A-3"]
        (bad,) = (i for i in items if isinstance(i, Malformed))
        assert bad.id.startswith("row:")
        assert bad.phone == PHONES[2]
        assert "empty id" in bad.detail
        assert f"record={bad.id}" in caplog.text
        assert await polled(strategy) == []  # the same bad row is not reported again
    finally:
        await strategy.aclose()


async def test_a_missing_table_or_column_is_a_config_error_naming_it(crm: Crm) -> None:
    async def open_fails(strategy: SqlStrategy, match: str) -> None:
        try:
            with pytest.raises(ConfigError, match=match):
                await strategy.open()
        finally:
            await strategy.aclose()

    await open_fails(SqlStrategy(crm.url, "contacts"), "no table 'contacts'")
    await open_fails(
        SqlStrategy(crm.url, "leads", greeting="Hi {surname}"),
        r"no column 'surname' \(template 'Hi \{surname\}'\)",
    )
    await open_fails(
        SqlStrategy(crm.url, "leads", write_back=WriteBack(status_column="outcome")),
        r"no column 'outcome' \(write_back\)",
    )
    await open_fails(
        SqlStrategy(crm.url, "leads", write_back=WriteBack(status_column="tag")),
        "holds 8 characters",
    )
    await open_fails(
        SqlStrategy(crm.url, "leads", write_back=WriteBack(result_columns={"status": "answer"})),
        r"no column 'answer' \(write_back\)",
    )
    await open_fails(
        SqlStrategy(crm.url, "leads", due_column="first_name"),
        "due_column 'first_name' is VARCHAR.*, not a date or timestamp",
    )


async def test_a_where_condition_is_passed_to_the_database_as_written(crm: Crm) -> None:
    await crm.add(lead(1, status="new: web"), lead(2, status="new"), lead(3, status="old :x"))
    strategy = SqlStrategy(crm.url, "leads", where="status IN ('new: web', 'old :x')")
    try:
        assert sorted(r.id for r in await polled(strategy)) == ["1", "3"]
    finally:
        await strategy.aclose()


async def test_a_query_the_database_refuses_fails_the_poll_with_its_reason(crm: Crm) -> None:
    await crm.add(lead(1))
    strategy = SqlStrategy(crm.url, "leads", where="no_such_column = 1")
    try:
        with pytest.raises(SourceError, match=r"reading table 'leads' failed: .*no_such_column"):
            await polled(strategy)
        strategy.where = None  # the operator fixes the configuration
        strategy._view = None
        assert [r.id for r in await polled(strategy)] == ["1"]
    finally:
        await strategy.aclose()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_an_unreachable_server_is_a_source_error_without_the_password(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    strategy = SqlStrategy(f"{scheme}://dialer:s3cret-pw@127.0.0.1:{port}/crm", "leads")
    try:
        with caplog.at_level(logging.WARNING):
            await strategy.open()  # the database may come up later: logged, not raised
            with pytest.raises(SourceError) as raised:
                await polled(strategy)
        assert "sql.unreachable strategy=leads" in caplog.text
        assert "reading the columns of table 'leads' failed" in str(raised.value)
        assert "s3cret" not in str(raised.value) + caplog.text + repr(strategy)
        assert "***" in repr(strategy)
    finally:
        await strategy.aclose()


async def test_the_hub_dials_due_rows_and_writes_every_outcome_back(
    crm: Crm, tmp_path: Path
) -> None:
    await crm.add(*(lead(n) for n in range(1, 6)), lead(6, call_after=datetime(2099, 1, 1)))
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def run(agent: ScriptedAgent) -> SqlStrategy:
        strategy = SqlStrategy(crm.url, "leads", due_column="call_after", write_back=OUTCOME)
        hub = DispatchHub(
            agent=agent, strategies=[strategy], store=ledger, exit_when_done=True, max_concurrent=3
        )
        with anyio.fail_after(20):
            await hub.run()
        return strategy

    await run(ScriptedAgent(script={PHONES[2]: ["busy"]}))

    statuses = {n: (await crm.row(n))["dispatch_status"] for n in range(1, 7)}
    assert statuses == {
        1: "completed: hangup",
        2: "failed: busy",
        3: "completed: hangup",
        4: "completed: hangup",
        5: "completed: hangup",
        6: None,  # not due
    }
    again = ScriptedAgent()
    await run(again)
    assert again.dials == []
    assert await fetch(ledger, "SELECT count(*) FROM attempts") == [(5,)]


async def test_a_connection_the_server_dropped_between_polls_is_replaced(
    postgres_url: str,
) -> None:
    engine = create_async_engine(SqlStrategy(postgres_url, "leads").url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await Crm(postgres_url, engine).add(lead(1))
    strategy = SqlStrategy(postgres_url, "leads")
    try:
        assert len(await polled(strategy)) == 1
        database = make_url(postgres_url).database
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            )
        await Crm(postgres_url, engine).add(lead(2))

        assert [r.id for r in await polled(strategy)] == ["2"]
    finally:
        await strategy.aclose()
        await engine.dispose()


async def test_mysql_sessions_read_timestamps_in_utc(mariadb_url: str) -> None:
    strategy = SqlStrategy(mariadb_url, "leads")
    try:
        async with strategy.engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT @@session.time_zone")).scalar() == "+00:00"
    finally:
        await strategy.aclose()


async def test_the_password_never_shows_in_the_strategy() -> None:
    strategy = SqlStrategy("postgresql://dialer:hunter2@db.example/crm", "crm.leads")
    assert strategy.name == "leads"
    assert "hunter2" not in repr(strategy)
    with pytest.raises(ConfigError, match="unsupported database in 'oracle'"):
        SqlStrategy("oracle://scott:tiger@db/x", "leads")
