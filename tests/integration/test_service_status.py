"""The STATUS= line's figures that come from the store: the day's dials (from the ledger, so a
restart does not reset them) and the callback backlog."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from dispatch import DispatchHub
from dispatch.service.backlog import OutboxBacklog
from dispatch.service.notify import Notifier
from dispatch.service.status import ServiceStatus
from dispatch.store import Store
from dispatch.testing import ManualClock, ScriptedAgent
from tests.support import PHONES, ListStrategy, rec, store_for

pytestmark = pytest.mark.anyio

# 20:00 UTC: the day ends four hours later.
EVENING = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)


async def dial_yesterday_and_today(url: str) -> None:
    """One attempt the day before, three earlier today (another daemon's, a previous run)."""
    store = Store(url)
    await store.open()
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        for n, at in enumerate([EVENING - timedelta(days=1)] + [EVENING - timedelta(hours=1)] * 3):
            await store.intent(
                attempt_id=f"a{n}", strategy="old", record_id=f"r{n}", number=1,
                phone=PHONES[50 + n], at=at,
            )  # fmt: skip
        store.close()
    await store.aclose()


async def test_dialed_today_counts_the_ledger_at_start_plus_this_run_and_restarts_at_midnight(
    sqlite_url: str,
) -> None:
    await dial_yesterday_and_today(sqlite_url)
    clock = ManualClock(wall=EVENING)
    source = ListStrategy([rec("r1", PHONES[0]), rec("r2", PHONES[1])])
    hub = DispatchHub(
        agent=ScriptedAgent(), strategies=[source], store=store_for(sqlite_url, clock),
        clock=clock, poll_interval=5.0,
    )  # fmt: skip
    status = ServiceStatus(hub, Notifier(None), OutboxBacklog(hub.store, clock))
    with anyio.fail_after(20):
        async with hub:
            await status.refresh()  # as the daemon does once the hub runs
            await source.signal.wait_until(lambda: hub.statistics().completed == 2)
            after_dials = status.line()
            clock.advance(4 * 3600)  # midnight, UTC
            new_day = status.dialed_today(hub.statistics())
            await status.refresh()
            next_day = status.line()
    # Three from earlier today and this run's two; not yesterday's.
    assert re.fullmatch(
        r"0 calls active, 5 dialed since 00:00 UTC, 0 pending, 0 waiting, \d+ callbacks? pending",
        after_dials,
    )
    assert new_day is None  # not read yet: left out rather than yesterday's figure
    assert next_day.startswith("0 calls active, 0 dialed since 00:00 UTC, ")
