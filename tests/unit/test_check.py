"""``dispatch check`` explains every hold and skip of the calling rules."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from sqlalchemy import insert

from dispatch.check import check
from dispatch.config import load_settings
from dispatch.store import DoNotCall, Store
from dispatch.store.models import attempts
from dispatch.testing import ManualClock

pytestmark = pytest.mark.anyio

CONFIG = """
[store]
url = "sqlite:///dispatch.db"

[[strategies]]
kind = "csv"
path = "leads.csv"
watch = false
timezone = "{timezone}"
not_after = "{not_after}"
[strategies.calling_hours]
rules = "us"
[strategies.caps]
per_24h = 3
"""


async def test_check_says_why_each_record_waits_or_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "leads.csv").write_text(
        "id,phone,timezone,not_after\n"
        "ny,+12125552671,,\n"
        "la,+12135552671,,\n"
        "stop,+12125552672,,\n"
        "mars,+12125552673,Mars/Olympus,\n"
        "late,+12125552674,,2026-01-05T14:00:00Z\n"
        "often,+12125552675,,\n"
    )
    store = Store(f"sqlite:///{tmp_path / 'dispatch.db'}")
    await store.open()
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await store.add_do_not_call(
            [DoNotCall("+12125552672", "cli")], at=datetime(2026, 1, 2, tzinfo=UTC)
        )
        store.close()
    async with store.engine.begin() as conn:  # three calls to one number this morning
        await conn.execute(
            insert(attempts),
            [
                {
                    "id": f"a{n}",
                    "strategy": "other",
                    "record_id": "x",
                    "number": n + 1,
                    "phone": "+12125552675",
                    "state": "completed",
                    "reason": "hangup",
                    "dialed_at": datetime(2026, 1, 5, 13 + n, tzinfo=UTC),
                }
                for n in range(3)
            ],
        )
    await store.aclose()
    settings = load_settings(tmp_path / "config.toml")
    # Monday 15:00 UTC: 10:00 in New York, 07:00 in Los Angeles.
    report = await check(settings, tmp_path, limit=10, clock=ManualClock())
    [source] = report.sources
    assert source.samples == [
        ("dial", "ny", "+12125552671"),
        ("wait", "la", "outside hours until 08:00 America/Los_Angeles (us)"),
        ("skip", "stop", "dnc since 2026-01-02"),
        ("skip", "mars", "unknown_timezone: unknown time zone 'Mars/Olympus': give an IANA "
                         "name such as 'America/New_York'"),
        ("skip", "late", "expired: not_after 2026-01-05T14:00:00+00:00"),
        ("wait", "often", "cap: 3 calls in 24 h"),
    ]  # fmt: skip


async def test_check_gives_up_on_an_agent_that_keeps_reconnecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINECALL_API_KEY", "pk_test")
    (tmp_path / "leads.csv").write_text("id,phone\n")
    (tmp_path / "config.toml").write_text(
        '[agent]\nkind = "pinecall"\nagent_id = "dialer"\nurl = "ws://127.0.0.1:1"\n'
        '[[strategies]]\nkind = "csv"\npath = "leads.csv"\n'
    )
    settings = load_settings(tmp_path / "config.toml")
    with anyio.fail_after(10):
        report = await check(settings, tmp_path, limit=1, deadline=0.5)
    agent = next(p for p in report.parts if p.name == "agent")
    assert not agent.ok
    assert agent.detail.startswith("cannot connect to PinecallAgent(agent_id='dialer', ")
    assert "after 0.5 s (is the url right" in agent.detail
