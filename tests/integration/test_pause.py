"""The pause flags' own queries (`dispatch.store.controls`) against SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dispatch import StoreError
from dispatch.store import Store, controls
from dispatch.store.controls import EVERY, Pause
from dispatch.testing import ManualClock

pytestmark = pytest.mark.anyio

NOW = ManualClock().now()
LATER = NOW + timedelta(hours=1)


@pytest.fixture
def store(migrated_store: Store) -> Store:
    return migrated_store


async def test_nothing_is_paused_in_a_new_store(store: Store) -> None:
    assert await controls.paused(store.engine) == {}
    assert await controls.resume(store.engine) == []


async def test_pause_sets_a_flag_per_strategy_and_one_for_every_strategy(store: Store) -> None:
    assert await controls.pause(store.engine, "reminders", at=NOW, reason="wrong script") is None
    assert await controls.pause(store.engine, at=NOW) is None
    flags = await controls.paused(store.engine)
    assert flags == {
        "reminders": Pause("reminders", NOW, "wrong script"),
        EVERY: Pause(EVERY, NOW, None),
    }
    assert flags["reminders"].paused_at.tzinfo is not None  # aware UTC, on SQLite too
    assert controls.is_paused(flags, "reminders") == flags["reminders"]
    assert controls.is_paused(flags, "followups") == flags[EVERY]
    assert controls.is_paused({}, "reminders") is None


async def test_pausing_again_keeps_the_first_time_and_replaces_the_reason(store: Store) -> None:
    await controls.pause(store.engine, "reminders", at=NOW, reason="first")
    before = await controls.pause(store.engine, "reminders", at=LATER, reason="second")
    assert before == Pause("reminders", NOW, "first")
    await controls.pause(store.engine, "reminders", at=LATER)  # no reason: the old one stays
    assert await controls.paused(store.engine) == {"reminders": Pause("reminders", NOW, "second")}


async def test_a_reason_longer_than_the_column_is_cut_not_refused(store: Store) -> None:
    await controls.pause(store.engine, "reminders", at=NOW, reason="x" * 2000)
    assert (await controls.paused(store.engine))["reminders"].reason == "x" * 500


async def test_resume_clears_one_flag_or_every_flag(store: Store) -> None:
    for name in ("reminders", "followups", EVERY):
        await controls.pause(store.engine, name, at=NOW)
    assert await controls.resume(store.engine, "reminders") == [Pause("reminders", NOW, None)]
    assert await controls.resume(store.engine, "reminders") == []
    assert set(await controls.paused(store.engine)) == {"followups", EVERY}
    cleared = await controls.resume(store.engine)
    assert [flag.strategy for flag in cleared] == [EVERY, "followups"]
    assert await controls.paused(store.engine) == {}


async def test_an_empty_strategy_name_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="empty"):
        await controls.pause(store.engine, "", at=NOW)


async def test_a_store_without_the_table_raises_a_store_error(any_store_url: str) -> None:
    store = Store(any_store_url)
    await store.open(migrate=False)  # never migrated: no controls table
    try:
        with pytest.raises(StoreError, match="reading the pause flags"):
            await controls.paused(store.engine)
        with pytest.raises(StoreError, match="pausing"):
            await controls.pause(store.engine, at=NOW)
    finally:
        await store.aclose()
