"""A live CSV under a running hub: real inotify, real files, the hub's own clock injected."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatch import DispatchHub, Record
from dispatch.abc import CallbackName, StrategyContext
from dispatch.testing import ManualClock, ScriptedAgent, Signal
from strategies import CsvStrategy, WriteBack

pytestmark = pytest.mark.anyio

HEADER = "id,phone,name\n"


def row(n: int, name: str = "Ada") -> str:
    return f"r{n},+1415555{2600 + n:04d},{name}\n"


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def statuses(path: Path) -> dict[str, str]:
    table = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    return {r["id"]: r.get("dispatch_status") or "" for r in table}


class ObservedCsv(CsvStrategy):
    """Notifies a signal after each delivered outcome."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signal = Signal()
        self.delivered: list[tuple[str, str]] = []

    async def deliver(self, callback: CallbackName, record: Record, *args: str) -> None:
        await super().deliver(callback, record, *args)
        self.delivered.append((callback, record.id))
        self.signal.notify()


async def test_the_watcher_asks_for_a_poll_when_the_file_is_saved(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(HEADER + row(1))
    (tmp_path / "other.csv").write_text("unrelated")
    strategy = CsvStrategy(path)
    asked = Signal()
    requests = 0

    def poll_now() -> None:
        nonlocal requests
        requests += 1
        asked.notify()

    with anyio.fail_after(10):
        await strategy.open(StrategyContext(poll_now=poll_now))
        async with anyio.create_task_group() as tg:
            tg.start_soon(strategy.watch)
            # Once registered, the watcher asks for one poll (for saves made while it started).
            await asked.wait_until(lambda: requests == 1)
            append(path, row(2))
            await asked.wait_until(lambda: requests == 2)
            seen = requests
            (tmp_path / "other.csv").write_text("still unrelated")
            tmp = tmp_path / "save.tmp"
            tmp.write_text(HEADER + row(1) + row(3))
            os.replace(tmp, path)  # an editor's atomic save
            await asked.wait_until(lambda: requests > seen)
            tg.cancel_scope.cancel()


async def test_rows_saved_while_the_hub_runs_are_dialed_and_their_outcomes_written_back(
    tmp_path: Path, sqlite_url: str
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(HEADER + row(1))
    strategy = ObservedCsv(path, write_back=WriteBack())
    agent = ScriptedAgent(script={"+14155552602": ["busy"]})
    clock = ManualClock()  # never advanced: only the watcher can trigger a poll after the first
    hub = DispatchHub(agent=agent, strategies=[strategy], store=sqlite_url, clock=clock)

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            append(path, row(2) + row(3))
            await agent.wait_for_dials(3)
            await strategy.signal.wait_until(lambda: len(strategy.delivered) >= 5)
            hub.stop()

    assert sorted(d.to for d in agent.dials) == ["+14155552601", "+14155552602", "+14155552603"]
    assert statuses(path) == {
        "r1": "completed: hangup",
        "r2": "failed: busy",
        "r3": "completed: hangup",
    }


async def test_a_failed_write_back_is_retried_until_the_file_is_back(
    tmp_path: Path, sqlite_url: str
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(HEADER + row(1))
    strategy = ObservedCsv(path, write_back=WriteBack(), watch=False)
    attempts: list[str] = []

    async def file_gone_during_the_call(request: Any) -> None:
        os.replace(path, tmp_path / "moved-away.csv")  # the operator moves it, then back

    agent = ScriptedAgent(on_dial=file_gone_during_the_call)
    clock = ManualClock()
    hub = DispatchHub(
        agent=agent,
        strategies=[strategy],
        store=sqlite_url,
        clock=clock,
        callback_timeout=5.0,
    )
    original = strategy.on_dispatched

    def on_dispatched(record: Record, call_id: str) -> None:
        attempts.append(call_id)
        original(record, call_id)

    strategy.on_dispatched = on_dispatched  # type: ignore[method-assign]

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: 1.0 in clock.deadlines)  # the outbox's backoff
            assert strategy.delivered == []  # the write failed, so the callback did not run
            os.replace(tmp_path / "moved-away.csv", path)
            clock.advance(1.0)  # the outbox's first retry
            await strategy.signal.wait_until(lambda: len(strategy.delivered) >= 2)
            hub.stop()

    assert len(attempts) == 1
    assert statuses(path) == {"r1": "completed: hangup"}
