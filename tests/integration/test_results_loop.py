"""The whole loop of an answer, against the fake Pinecall over real sockets: the model's tool
call, answered once; the result committed with the outcome, shown by history, delivered to
`on_result` before `on_completed`, written back into a CSV file and a PostgreSQL table; and a
"call me back at" that dials the record again at that time, on the injected clock."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dispatch import ActionKind, DispatchHub, Record, ResultAction
from dispatch.agents.pinecall import PinecallAgent
from dispatch.pinecall_fake import ToolCall
from dispatch.store import reports
from dispatch.testing import Answer, FakePinecall, ManualClock, Signal
from strategies import CsvStrategy
from strategies.sql import SqlStrategy, WriteBack
from tests.integration.test_pinecall import CALLER
from tests.integration.test_pinecall_results import CALL_BACK, CONFIRM, MESSAGES
from tests.support import PHONES, notify_from_anywhere, store_for

pytestmark = pytest.mark.anyio

ADA, BOB, CAROL = PHONES[1], PHONES[2], PHONES[3]
ANSWERS = {"status": "Appointment", "notes": "Notes"}
table = Table(
    "leads",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("phone", String(32)),
    Column("dispatch_status", String(60)),
    Column("appointment", String(20)),
    Column("notes", String(200)),
)


def confirmed(msg_id: str, **extra: Any) -> Answer:
    arguments = {"status": "confirmed", **extra}
    return Answer(tool_calls=[ToolCall("confirm_appointment", arguments, msg_id=msg_id, times=2)],
                  messages=MESSAGES)  # fmt: skip


class Heard:
    """What the strategies were told, in order, from whichever thread told them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, str]] = []
        self.signal = Signal()

    def _add(self, event: tuple[str, str, str]) -> None:
        with self.lock:
            self.events.append(event)
        notify_from_anywhere(self.signal)

    async def wait_for(self, count: int) -> None:
        await self.signal.wait_until(lambda: len(self.events) >= count)

    def listen(self, strategy: CsvStrategy | SqlStrategy) -> None:
        def on_result(record: Record, call_id: str, result: Any) -> None:
            self._add(("result", record.id, result.tool))

        def on_completed(record: Record, call_id: str, reason: str) -> None:
            self._add(("completed", record.id, reason))

        strategy.on_result = on_result  # type: ignore[method-assign]
        strategy.on_completed = on_completed  # type: ignore[method-assign]

    def of(self, record_id: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(kind, what) for kind, rid, what in self.events if rid == record_id]


@pytest.fixture
async def crm(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await conn.execute(insert(table), [{"id": 7, "phone": CAROL}])
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_an_answer_goes_from_the_tool_call_to_the_ledger_the_callbacks_and_the_rows(
    tmp_path: Path, sqlite_url: str, postgres_url: str, crm: AsyncEngine
) -> None:
    clock = ManualClock()
    later = clock.now() + timedelta(hours=2)
    leads = tmp_path / "leads.csv"
    leads.write_text(f"id,phone,name\nada,{ADA},Ada\nbob,{BOB},Bob\n")
    csv = CsvStrategy(leads, name="csv", watch=False, write_back=WriteBack(result_columns=ANSWERS))
    csv.result_actions = (ResultAction(ActionKind.CALL_BACK_AT, tool="call_back", at="at"),)
    sql = SqlStrategy(
        postgres_url,
        "leads",
        name="sql",
        write_back=WriteBack(result_columns={"status": "appointment", "notes": "notes"}),
    )
    heard = Heard()
    heard.listen(csv)
    heard.listen(sql)
    script = {
        ADA: [confirmed("m-ada", notes="bring the x-rays")],
        BOB: [
            Answer(tool_calls=[ToolCall("call_back", {"at": later.isoformat()}, msg_id="m-bob")]),
            confirmed("m-bob-2"),
        ],
        CAROL: [confirmed("m-carol")],
    }
    async with FakePinecall(script=script, clock=clock) as fake:
        agent = PinecallAgent(
            url=fake.url,
            api_key=fake.api_key,
            agent_id="dialer",
            phone_numbers=[CALLER],
            tools=[CONFIRM, CALL_BACK],
            ping_interval=10**6,  # hours pass on the clock below: no ping deadline to miss
            clock=clock,
        )
        hub = DispatchHub(
            agent=agent,
            strategies=[csv, sql],
            store=store_for(sqlite_url, clock),
            clock=clock,
            from_=CALLER,
            retry_attempts=1,
            poll_interval=3600.0,
        )
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                await heard.wait_for(6)  # everyone's first call
                assert len(fake.received("call.dial")) == 3
                clock.advance(2 * 3600 - 1)
                await clock.wait_all_tasks_blocked()
                assert len(fake.received("call.dial")) == 3  # not a second before Bob asked
                clock.advance(1)
                await heard.wait_for(8)
                hub.stop()
        dialed = [f.frame["to"] for f in fake.received("call.dial")]
        assert sorted(dialed[:3]) == [ADA, BOB, CAROL]
        assert dialed[3] == BOB
        # Each tool call (sent twice) was answered once.
        assert sorted(f["msg_id"] for f in fake.tool_results) == [
            "m-ada", "m-bob", "m-bob-2", "m-carol"
        ]  # fmt: skip

    assert heard.of("ada") == [("result", "confirm_appointment"), ("completed", "hangup")]
    assert heard.of("bob") == [
        ("result", "call_back"),
        ("completed", "hangup"),  # the call that asked for a call back
        ("result", "confirm_appointment"),
        ("completed", "hangup"),
    ]
    assert heard.of("7") == [("result", "confirm_appointment"), ("completed", "hangup")]

    engine = store_for(sqlite_url, clock)
    await engine.open()
    try:
        [ada] = await reports.history(engine.engine, record_id="ada", transcripts=True)
        bob = await reports.history(engine.engine, record_id="bob")
    finally:
        await engine.aclose()
    [said] = ada.results
    assert (said["tool"], said["arguments"]) == (
        "confirm_appointment",
        {"status": "confirmed", "notes": "bring the x-rays"},
    )
    assert ada.transcript == [MESSAGES[0], MESSAGES[2]]
    assert [r.results[0]["tool"] for r in bob] == ["call_back", "confirm_appointment"]
    assert bob[1].dialed_at - bob[0].dialed_at == timedelta(hours=2)

    rows = leads.read_text().splitlines()
    assert rows[0] == "id,phone,name,dispatch_status,Appointment,Notes"
    assert rows[1] == f"ada,{ADA},Ada,completed: hangup,confirmed,bring the x-rays"
    assert rows[2] == f"bob,{BOB},Bob,completed: hangup,confirmed,"
    async with crm.connect() as conn:
        carol = (await conn.execute(select(table))).mappings().one()
    assert (carol["dispatch_status"], carol["appointment"]) == ("completed: hangup", "confirmed")
