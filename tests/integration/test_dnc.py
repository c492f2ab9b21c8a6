"""The do-not-call list's own queries (`dispatch.store.dnc`) against SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from dispatch import StoreError, StoreUnavailable
from dispatch.store import DoNotCall, Store, dnc
from dispatch.testing import ManualClock

pytestmark = pytest.mark.anyio

NOW = ManualClock().now()
LATER = NOW + timedelta(hours=1)


@pytest.fixture
def store(migrated_store: Store) -> Store:
    return migrated_store


def numbers(count: int, start: int = 0) -> list[str]:
    # E.164-shaped and in string order; the list does not check numbers, the CLI does.
    return [f"+1415{n:07d}" for n in range(start, start + count)]


async def test_add_lists_new_numbers_and_returns_the_ones_it_added(store: Store) -> None:
    entries = [DoNotCall("+14155552671", "cli", reason="asked"), DoNotCall("+14155552672", "cli")]
    assert await dnc.add(store.engine, entries, at=NOW) == {"+14155552671", "+14155552672"}
    rows = await dnc.listed(store.engine)
    assert [r.as_dict() for r in rows] == [
        {
            "phone": "+14155552671",
            "added_at": NOW.isoformat(),
            "source": "cli",
            "strategy": None,
            "record_id": None,
            "reason": "asked",
        },
        {
            "phone": "+14155552672",
            "added_at": NOW.isoformat(),
            "source": "cli",
            "strategy": None,
            "record_id": None,
            "reason": None,
        },
    ]


async def test_adding_a_listed_number_leaves_its_row_as_it_was(store: Store) -> None:
    first = DoNotCall("+14155552671", "result", "reminders", "appt-001", "cancelled")
    await dnc.add(store.engine, [first], at=NOW)
    again = [DoNotCall("+14155552671", "import", reason="other"), DoNotCall("+14155552672", "cli")]
    assert await dnc.add(store.engine, again, at=LATER) == {"+14155552672"}
    [row] = await dnc.listed(store.engine, ["+14155552671"])
    assert (row.source, row.strategy, row.record_id, row.reason, row.added_at) == (
        "result",
        "reminders",
        "appt-001",
        "cancelled",
        NOW,
    )


async def test_add_commits_in_batches_and_the_first_of_a_repeated_phone_wins(
    store: Store,
) -> None:
    entries = [DoNotCall(p, "import", reason="first") for p in numbers(7)]
    entries.insert(3, DoNotCall(entries[0].phone, "import", reason="second"))
    added = await dnc.add(store.engine, entries, at=NOW, batch=2)
    assert added == set(numbers(7))
    rows = await dnc.listed(store.engine)
    assert [r.phone for r in rows] == numbers(7)
    assert {r.reason for r in rows} == {"first"}


async def test_a_batch_size_below_one_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="batch"):
        await dnc.add(store.engine, [], at=NOW, batch=0)


async def test_a_large_import_is_added_and_read_back_in_phone_order(store: Store) -> None:
    phones = numbers(12_000)  # more than one batch, and more than one page when read
    with anyio.fail_after(60):
        added = await dnc.add(store.engine, [DoNotCall(p, "import") for p in reversed(phones)],
                              at=NOW)  # fmt: skip
        assert len(added) == 12_000
        async with dnc.reading(store.engine) as entries:
            assert [entry.phone async for entry in entries] == phones


async def test_remove_returns_only_the_numbers_that_were_listed(store: Store) -> None:
    await dnc.add(store.engine, [DoNotCall(p, "cli") for p in numbers(3)], at=NOW)
    removed = await dnc.remove(store.engine, [numbers(3)[0], numbers(3)[2], "+14155559999"])
    assert removed == {numbers(3)[0], numbers(3)[2]}
    assert [r.phone for r in await dnc.listed(store.engine)] == [numbers(3)[1]]
    assert await dnc.remove(store.engine, []) == set()


async def test_listed_and_remove_take_more_phones_than_one_in_list_holds(store: Store) -> None:
    phones = numbers(2_500)
    await dnc.add(store.engine, [DoNotCall(p, "import") for p in phones[::2]], at=NOW)
    assert [r.phone for r in await dnc.listed(store.engine, phones)] == phones[::2]
    assert await dnc.remove(store.engine, phones) == set(phones[::2])
    assert await dnc.listed(store.engine) == []


async def test_the_daemons_writer_and_these_queries_share_one_list(store: Store) -> None:
    # The daemon adds opt-outs through its writer while an operator imports a list: both
    # land, neither waits for ever, and each side sees the other's numbers.
    opt_outs = [DoNotCall(p, "result", "reminders", f"r{i}") for i, p in enumerate(numbers(50))]
    imported = [DoNotCall(p, "import") for p in numbers(20_000, start=25)]
    cli = Store(store.url)
    await cli.open(migrate=False)
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(store.run)
                async with anyio.create_task_group() as both:

                    async def opt_out_one_by_one() -> None:
                        for entry in opt_outs:
                            await store.add_do_not_call([entry], at=NOW)

                    both.start_soon(opt_out_one_by_one)
                    added = await dnc.add(cli.engine, imported, at=LATER, batch=1_000)
                store.close()
    finally:
        await cli.aclose()
    listed = await store.do_not_call()
    assert set(listed) == set(numbers(20_025))
    # A number both sides added is counted by the one that got there first.
    assert len(added) + sum(1 for p in numbers(50) if listed[p].source == "result") == 20_025
    assert all(listed[p].source == "import" for p in added)


async def test_a_store_that_was_never_migrated_is_a_store_error(any_store_url: str) -> None:
    store = Store(any_store_url)
    await store.open(migrate=False)
    try:
        with pytest.raises(StoreError, match="reading the do-not-call list"):
            await dnc.listed(store.engine)
        with pytest.raises(StoreError, match="adding to the do-not-call list"):
            await dnc.add(store.engine, [DoNotCall("+14155552671", "cli")], at=NOW)
        with pytest.raises(StoreError, match="removing from the do-not-call list"):
            await dnc.remove(store.engine, ["+14155552671"])
    finally:
        await store.aclose()


async def test_an_unreachable_postgresql_is_store_unavailable() -> None:
    store = Store("postgresql://postgres@127.0.0.1:9/nowhere")  # the discard port: refused
    await store.open(migrate=False)
    try:
        with anyio.fail_after(30), pytest.raises(StoreUnavailable, match="unreachable"):
            await dnc.listed(store.engine)
        with anyio.fail_after(30), pytest.raises(StoreUnavailable):
            async with dnc.reading(store.engine) as entries:
                [entry async for entry in entries]
    finally:
        await store.aclose()


async def test_an_error_in_the_readers_own_code_is_not_taken_for_a_store_error(
    store: Store,
) -> None:
    await dnc.add(store.engine, [DoNotCall("+14155552671", "cli")], at=NOW)

    async def export() -> None:
        async with dnc.reading(store.engine) as entries:
            async for _ in entries:
                raise OSError("disk full")  # writing the export file failed

    with pytest.raises(OSError, match="disk full"):
        await export()
