"""The live progress of a foreground run: per strategy counts, rate and ETA."""

from __future__ import annotations

import io

import anyio
import pytest
from rich.console import Console

from dispatch.service.progress import Progress, format_eta, on_terminal, table
from dispatch.testing import ScriptedAgent
from tests.support import PHONES, ListStrategy, hub_for, rec

pytestmark = pytest.mark.anyio


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_rows_count_each_strategy_and_work_out_rate_and_eta(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    leads = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(5)], name="leads")
    other = ListStrategy([rec("bad", "12")], name="other")
    hub = hub_for(sqlite_url, agent, leads, other, max_concurrent=1, exit_when_done=True)
    now = [0.0]
    progress = Progress(hub, clock=lambda: now[0])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            assert [row.strategy for row in progress.rows()] == ["leads", "other"]
            for n in range(2):
                await agent.wait_for_live(1)
                next(iter(agent.live.values())).end()
                await agent.wait_for_dials(n + 2)
            await agent.wait_for_live(1)
            await other.wait_for_events(1)  # "bad" skipped
            now[0] = 30.0
            [leads_row, other_row] = progress.rows()
            hub.stop()
            next(iter(agent.live.values())).end()  # the drain waits for it

    assert (leads_row.dialed, leads_row.active, leads_row.done, leads_row.remaining) == (3, 1, 2, 2)
    assert leads_row.per_minute == pytest.approx(6.0)  # 3 dials in 30 s
    assert leads_row.eta == pytest.approx(20.0)  # 2 left at 6 a minute
    assert (other_row.done, other_row.remaining, other_row.eta) == (1, 0, 0.0)
    assert leads_row.summary() == (
        "hub.progress strategy=leads dialed=3 active=1 done=2 remaining=2 rate=6.0/min eta=0m20s"
    )
    out = io.StringIO()
    Console(file=out, width=100).print(table([leads_row, other_row]))
    assert "leads" in out.getvalue()
    assert "6.0/min" in out.getvalue()


def test_eta_reads_in_minutes_or_hours() -> None:
    assert format_eta(None) == "-"
    assert format_eta(75) == "1m15s"
    assert format_eta(2 * 3600 + 5 * 60) == "2h05m"


def test_the_live_table_is_for_a_terminal_only() -> None:
    assert on_terminal((Tty(), Tty()), {})
    assert not on_terminal((io.StringIO(), Tty()), {})  # stdout piped to a file
    assert not on_terminal((Tty(), io.StringIO()), {})
    assert not on_terminal((Tty(), Tty()), {"JOURNAL_STREAM": "8:1"})  # under journald
    assert not on_terminal((Tty(), Tty()), {"INVOCATION_ID": "x"})  # under systemd
