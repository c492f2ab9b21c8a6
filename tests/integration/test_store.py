"""The ledger against every backend (SQLite and PostgreSQL, for real)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dispatch import AttemptState, RecordState, StoreError
from dispatch.store import KnownRecord, Skipped, Store
from dispatch.store.migrate import head_revision
from dispatch.store.models import metadata
from dispatch.testing import ManualClock
from tests.conftest import fetch

pytestmark = pytest.mark.anyio

NOW = ManualClock().now()


@pytest.fixture
async def store(any_store_url: str) -> AsyncIterator[Store]:
    store = Store(any_store_url)
    await store.open()
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        yield store
        store.close()
    await store.aclose()


async def intent(store: Store, attempt_id: str, record_id: str, number: int = 1) -> None:
    await store.intent(
        attempt_id=attempt_id,
        strategy="s",
        record_id=record_id,
        number=number,
        phone="+14155552671",
        at=NOW,
    )


async def test_migrations_and_models_agree(store: Store) -> None:
    def diff(conn: object) -> list[object]:
        return compare_metadata(MigrationContext.configure(conn), metadata)  # type: ignore[arg-type]

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_upgrading_twice_is_harmless(store: Store) -> None:
    await store.upgrade()
    assert await fetch(_plain(store), "SELECT version_num FROM alembic_version") == [
        (head_revision(),)
    ]


async def finish(
    store: Store,
    attempt_id: str,
    record_id: str,
    *,
    state: AttemptState = AttemptState.COMPLETED,
    record_state: RecordState = RecordState.COMPLETED,
    reason: str = "hangup",
    call_id: str | None = None,
    duration: float | None = None,
    callback: Any = None,
) -> None:
    await store.finished(
        attempt_id=attempt_id,
        strategy="s",
        record_id=record_id,
        state=state,
        record_state=record_state,
        reason=reason,
        call_id=call_id,
        duration=duration,
        at=NOW,
        callback=callback,
    )


async def skip_invalid(store: Store, record_id: str, callback: Any = None) -> None:
    skip = Skipped("s", record_id, "12", RecordState.SKIPPED, "invalid_phone", 0, callback)
    await store.skipped([skip], at=NOW)


def _plain(store: Store) -> str:
    return store.url.render_as_string(hide_password=False)


async def test_an_attempt_moves_from_intent_to_outcome(store: Store) -> None:
    await intent(store, "a1", "r1")
    assert await store.known_records() == {("s", "r1"): KnownRecord(RecordState.DIALING, 1)}
    await store.activated("a1", "call-9", at=NOW)
    await finish(store, "a1", "r1", call_id="call-9", duration=42.0)
    assert await fetch(_plain(store), "SELECT state, call_id, reason, duration FROM attempts") == [
        ("completed", "call-9", "hangup", 42.0)
    ]
    assert await store.known_records() == {("s", "r1"): KnownRecord(RecordState.COMPLETED, 1)}


async def test_a_call_id_committed_after_the_outcome_leaves_the_attempt_finished(
    store: Store,
) -> None:
    # Store.activated_soon is not awaited: with a call that ends at once, the outcome may be
    # committed first (in the same batch, statements grouped). The call id must not make the
    # finished attempt active again; its on_dispatched still comes first in the outbox.
    from dispatch import Record
    from dispatch.store import outbox as ob

    r1 = Record(id="r1", phone="+14155552671")
    await intent(store, "a1", "r1")
    completed = ob.Callback("s", "on_completed", r1, ("c1", "hangup"))
    await finish(store, "a1", "r1", call_id="c1", duration=1.0, callback=completed)
    await store.activated("a1", "c1", at=NOW)
    assert await fetch(_plain(store), "SELECT state, call_id FROM attempts") == [
        ("completed", "c1")
    ]


async def test_a_call_id_not_awaited_is_committed_before_the_outcome_after_it(
    store: Store,
) -> None:
    from dispatch import Record
    from dispatch.store import outbox as ob

    r1 = Record(id="r1", phone="+14155552671")
    await intent(store, "a1", "r1")
    woken: list[str] = []
    store.on_callbacks = lambda: woken.append("wake")
    failures: list[BaseException] = []
    store.activated_soon(
        "a1",
        "c1",
        at=NOW,
        callback=ob.Callback("s", "on_dispatched", r1, ("c1",)),
        failed=failures.append,
    )
    completed = ob.Callback("s", "on_completed", r1, ("c1", "hangup"))
    await finish(store, "a1", "r1", call_id="c1", duration=1.0, callback=completed)
    assert await fetch(_plain(store), "SELECT callback FROM outbox ORDER BY id") == [
        ("on_dispatched",),
        ("on_completed",),
    ]
    assert failures == []
    assert woken == ["wake", "wake"]


async def test_concurrent_writes_are_committed_in_groups(store: Store) -> None:
    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(intent, store, f"a{n}", f"r{n}")
    stats = store.statistics()
    assert stats.writes == 200
    assert stats.commits < 100  # many intents shared a transaction
    assert await fetch(_plain(store), "SELECT count(*) FROM attempts") == [(200,)]


async def test_an_attempt_number_cannot_be_used_twice_and_neighbours_still_commit(
    store: Store,
) -> None:
    await intent(store, "a1", "r1", number=1)
    results: dict[str, BaseException | None] = {}

    async def attempt(attempt_id: str, record_id: str) -> None:
        try:
            await intent(store, attempt_id, record_id, number=1)
            results[attempt_id] = None
        except StoreError as exc:
            results[attempt_id] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(attempt, "dup", "r1")
        tg.start_soon(attempt, "ok", "r2")
    assert isinstance(results["dup"], StoreError)
    assert results["ok"] is None
    assert sorted(await fetch(_plain(store), "SELECT id FROM attempts")) == [("a1",), ("ok",)]


async def test_recovery_interrupts_attempts_left_in_flight(store: Store) -> None:
    await intent(store, "a1", "r1")
    await intent(store, "a2", "r2")
    await store.activated("a2", "call-2", at=NOW)
    assert await store.recover("interrupt", NOW) == 2
    assert await store.recover("interrupt", NOW) == 0
    assert sorted(await fetch(_plain(store), "SELECT id, state FROM attempts")) == [
        ("a1", "interrupted"),
        ("a2", "interrupted"),
    ]
    known = await store.known_records()
    assert {k.state for k in known.values()} == {RecordState.INTERRUPTED}


async def test_recovery_in_retry_mode_puts_records_back_with_the_attempt_counted(
    store: Store,
) -> None:
    await intent(store, "a1", "r1")
    await store.recover("retry", NOW)
    assert await store.known_records() == {("s", "r1"): KnownRecord(RecordState.RETRY, 1)}


def test_the_store_never_shows_a_password() -> None:
    store = Store("postgresql://dispatch:s3cret@127.0.0.1/test")
    assert "s3cret" not in repr(store)


async def test_writing_to_a_store_that_is_not_open_fails_clearly(any_store_url: str) -> None:
    store = Store(any_store_url)
    with pytest.raises(StoreError, match="not open"):
        await intent(store, "a1", "r1")


async def test_status_and_history_read_the_ledger(store: Store) -> None:
    from dispatch.store import reports

    await intent(store, "a1", "r1")
    await finish(
        store,
        "a1",
        "r1",
        state=AttemptState.REJECTED,
        record_state=RecordState.RETRY,
        reason="busy",
    )
    await intent(store, "a2", "r1", number=2)
    await skip_invalid(store, "r2")

    report = await reports.status(store.engine, NOW)
    assert report.strategies["s"].states == {"dialing": 1, "skipped": 1}
    assert report.strategies["s"].skipped == {"invalid_phone": 1}
    assert report.in_flight == 1
    assert report.dials_last_minute == 2

    rows = await reports.history(store.engine, phone="+14155552671")
    assert [(r.number, r.state, r.reason) for r in rows] == [
        (1, "rejected", "busy"),
        (2, "dialing", None),
    ]
    assert rows[0].dialed_at == NOW
    assert await reports.history(store.engine, record_id="r1", strategy="other") == []


async def test_a_callback_is_committed_with_its_outcome_and_due_in_record_order(
    store: Store,
) -> None:
    from datetime import timedelta

    from dispatch import Record
    from dispatch.store import outbox as ob

    r1 = Record(id="r1", phone="+14155552671", metadata={"crm": 7})
    await intent(store, "a1", "r1")
    await store.activated(
        "a1", "c1", at=NOW, callback=ob.Callback("s", "on_dispatched", r1, ("c1",))
    )
    completed = ob.Callback("s", "on_completed", r1, ("c1", "hangup"))
    await finish(store, "a1", "r1", call_id="c1", duration=3.0, callback=completed)
    r2 = Record(id="r2", phone="12")
    await skip_invalid(store, "r2", ob.Callback("s", "on_skipped", r2, ("invalid_phone",)))

    due = await ob.due(store.engine, NOW)
    # r1's on_completed waits behind its on_dispatched; r2 is independent.
    assert [(row.callback.record.id, row.callback.name) for row in due] == [
        ("r1", "on_dispatched"),
        ("r2", "on_skipped"),
    ]
    assert due[0].callback.record == r1  # the whole record survives the round trip
    first = due[0].id

    later = NOW + timedelta(seconds=30)
    await store.delivery_failed(first, 1, later, "ConnectionError: down")
    assert [row.callback.name for row in await ob.due(store.engine, NOW)] == ["on_skipped"]
    assert await ob.next_due(store.engine) == NOW  # r2's row, still due
    await store.delivered([due[1].id], NOW)
    assert await ob.next_due(store.engine) == later
    assert await ob.backlog(store.engine) == ob.Backlog(2, 1, oldest=NOW)  # r1 on_dispatched

    await store.delivered([first], later)
    assert [row.callback.name for row in await ob.due(store.engine, later)] == ["on_completed"]


async def test_recovery_queues_on_failed_for_each_interrupted_record(store: Store) -> None:
    from dispatch.store import outbox as ob

    await intent(store, "a1", "r1")
    await store.recover("interrupt", NOW)
    [row] = await ob.due(store.engine, NOW)
    assert (row.callback.name, row.callback.record.id, row.callback.args) == (
        "on_failed",
        "r1",
        ("interrupted",),
    )
    assert row.callback.record.phone == "+14155552671"


async def test_an_upgrade_that_dies_midway_leaves_nothing_and_a_restart_migrates(
    any_store_url: str,
) -> None:
    from sqlalchemy import Connection, inspect

    from dispatch.store.migrate import upgrade_connection

    def upgrade_then_die(conn: Connection) -> None:
        upgrade_connection(conn)  # every migration ran ...
        raise RuntimeError("killed before the commit")  # ... and the process died

    store = Store(any_store_url)
    await store.open(migrate=False)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            async with store.engine.begin() as conn:
                await conn.run_sync(upgrade_then_die)
        async with store.engine.connect() as conn:
            assert await conn.run_sync(lambda c: inspect(c).get_table_names()) == []
        await store.upgrade()  # the next start
        version = await fetch(_plain(store), "SELECT version_num FROM alembic_version")
        assert version == [(head_revision(),)]
    finally:
        await store.aclose()


async def test_recovery_never_downgrades_a_record_whose_latest_attempt_is_terminal(
    store: Store,
) -> None:
    # Attempt 1 was left in flight (its outcome lost), attempt 2 then completed: recovery
    # closes attempt 1 and leaves the record completed, with no on_failed queued.
    from dispatch.store import outbox as ob

    await intent(store, "a1", "r1", number=1)
    await intent(store, "a2", "r1", number=2)
    await finish(store, "a2", "r1", call_id="c2")
    for mode in ("retry", "interrupt"):
        await store.recover(mode, NOW)  # type: ignore[arg-type]
    assert sorted(await fetch(_plain(store), "SELECT id, state FROM attempts")) == [
        ("a1", "interrupted"),
        ("a2", "completed"),
    ]
    assert await store.known_records() == {("s", "r1"): KnownRecord(RecordState.COMPLETED, 2)}
    assert await ob.due(store.engine, NOW) == []


async def test_recovery_leaves_the_attempts_of_a_live_daemon_alone(
    store: Store, any_store_url: str
) -> None:
    await store.claim()  # this daemon is alive
    await intent(store, "mine", "r1")
    await intent(store, "orphan", "r2")
    # The orphan's owner never registered (or was removed as dead): it is recoverable.
    async with store.engine.begin() as conn:
        from sqlalchemy import text

        await conn.execute(text("UPDATE attempts SET owner = 'gone' WHERE id = 'orphan'"))
    assert await store.recover("interrupt", NOW) == 1
    assert sorted(await fetch(any_store_url, "SELECT id, state FROM attempts")) == [
        ("mine", "dialing"),
        ("orphan", "interrupted"),
    ]
    await store.release()


async def test_a_second_daemon_is_refused_while_the_first_ones_heartbeat_is_fresh(
    any_store_url: str,
) -> None:
    from dispatch import StoreInUse

    first, second = Store(any_store_url), Store(any_store_url)
    await first.open()
    await second.open()
    try:
        await first.claim()
        with pytest.raises(StoreInUse, match=r"store in use by [^:]+:\d+ since \d{4}-\d\d-\d\d"):
            await second.claim()
        await first.release()
        await second.claim()  # a clean stop frees the store at once
        assert await second.beat()
    finally:
        await second.release()
        await first.aclose()
        await second.aclose()


async def test_a_daemon_whose_process_is_gone_is_taken_over_at_once(any_store_url: str) -> None:
    from dataclasses import replace

    from dispatch.store import instances

    store = Store(any_store_url)
    await store.open()
    try:
        dead_pid = _exited_pid()
        me = instances.Instance.this_process(store.clock.now())
        await _register(store, replace(me, id="dead", pid=dead_pid))
        alive = replace(me, id="alive-elsewhere", host="other-host")
        replaced = await store.claim()
        assert [i.id for i in replaced] == ["dead"]
        await store.release()
        await _register(store, alive)  # another machine, heartbeat fresh: not provably gone
        from dispatch import StoreInUse

        with pytest.raises(StoreInUse, match="other-host"):
            await store.claim()
    finally:
        await store.aclose()


async def test_a_daemon_whose_heartbeat_expired_is_taken_over(any_store_url: str) -> None:
    from dataclasses import replace
    from datetime import timedelta

    from dispatch.store import instances

    store = Store(any_store_url)
    await store.open()
    try:
        me = instances.Instance.this_process(store.clock.now())
        stale = store.clock.now() - timedelta(seconds=31)
        await _register(store, replace(me, id="silent", host="far", heartbeat_at=stale))
        assert [i.id for i in await store.claim()] == ["silent"]
        assert await store.beat()
        async with store.engine.begin() as conn:  # someone removed us: the claim is lost
            from sqlalchemy import text

            await conn.execute(text("DELETE FROM instances"))
        assert not await store.beat()
    finally:
        await store.aclose()


async def test_an_intent_written_again_after_a_lost_commit_is_one_attempt(store: Store) -> None:
    await intent(store, "a1", "r1")
    await intent(store, "a1", "r1")  # the same id: the first commit did happen
    assert await fetch(_plain(store), "SELECT id, number FROM attempts") == [("a1", 1)]
    with pytest.raises(StoreError):
        await intent(store, "other", "r1")  # the same attempt number under another id


async def _register(store: Store, instance: Any) -> None:
    from dispatch.store.models import instances

    async with store.engine.begin() as conn:
        await conn.execute(
            instances.insert().values(
                id=instance.id,
                host=instance.host,
                pid=instance.pid,
                boot_id=instance.boot_id,
                started_at=instance.started_at,
                heartbeat_at=instance.heartbeat_at,
            )
        )


def _exited_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


async def test_two_daemons_starting_at_once_cannot_both_claim_the_store(
    any_store_url: str,
) -> None:
    from dispatch import StoreInUse

    for _ in range(5):
        stores = [Store(any_store_url) for _ in range(3)]
        for store in stores:
            await store.open()
        outcomes: list[str] = []

        async def claim(store: Store, outcomes: list[str] = outcomes) -> None:
            try:
                await store.claim()
                outcomes.append("won")
            except StoreInUse:
                outcomes.append("refused")
            except StoreError:  # SQLite may say "locked" instead, still not a second winner
                outcomes.append("failed")

        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(claim, store)
        assert outcomes.count("won") == 1, outcomes
        for store in stores:
            await store.release()
            await store.aclose()


async def test_recovery_in_retry_mode_ends_a_record_that_has_no_attempts_left(store: Store) -> None:
    from dispatch.store import outbox as ob

    await intent(store, "a1", "r1", number=2)  # its second and last allowed dial
    await intent(store, "a2", "r2", number=1)
    await store.recover("retry", NOW, max_dials=2)
    known = await store.known_records()
    assert known[("s", "r1")].state is RecordState.INTERRUPTED
    assert known[("s", "r2")].state is RecordState.RETRY
    assert [(r.callback.record.id, r.callback.name) for r in await ob.due(store.engine, NOW)] == [
        ("r1", "on_failed")
    ]


async def test_a_daemon_in_another_pid_namespace_is_never_taken_for_gone(
    any_store_url: str,
) -> None:
    # Containers on one host share its name and boot: their pids mean nothing to each other.
    from dataclasses import replace

    from dispatch import StoreInUse
    from dispatch.store import instances

    store = Store(any_store_url)
    await store.open()
    try:
        me = instances.Instance.this_process(store.clock.now())
        assert me.boot_id is not None
        elsewhere = replace(me, id="other", pid=_exited_pid(), boot_id=me.boot_id + "0")
        await _register(store, elsewhere)
        with pytest.raises(StoreInUse):
            await store.claim()
    finally:
        await store.aclose()


def test_a_process_in_another_pid_namespace_has_another_identity() -> None:
    # What tells a container's daemon from ours, though both share the host's name and boot.
    import subprocess
    import sys

    from dispatch.store import instances

    show = [
        sys.executable,
        "-c",
        "from dispatch.store import instances; print(instances._boot_id())",
    ]
    beside = subprocess.run(show, capture_output=True, text=True, check=True).stdout.strip()
    contained = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", *show],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = instances._boot_id()
    assert ours is not None
    assert beside == ours
    assert contained.split("/")[0] == ours.split("/")[0]  # the same boot
    assert contained != ours


async def test_rows_of_another_shape_in_one_batch_keep_their_own_values(
    any_store_url: str,
) -> None:
    # Rows of one statement go to the driver together, compiled for the first row's names:
    # a later row with more of them must still have its own values written, and a row short
    # of one is SQLAlchemy's to judge, never the writer's end.
    from dispatch.store.store import _FINISH_ATTEMPT

    first = Store(any_store_url)
    await first.open()
    async with anyio.create_task_group() as tg:
        await tg.start(first.run)
        await intent(first, "a1", "r1")
        await intent(first, "a2", "r2")
        first.close()
    await first.aclose()
    store = Store(any_store_url)
    await store.open()
    later = NOW + timedelta(seconds=5)
    good = {"b_id": "a2", "b_state": "completed", "b_reason": "hangup", "b_call_id": "c",
            "b_duration": 1.0, "b_at": later, "b_started_at": None, "b_results": None,
            "b_transcript": None, "b_refused": None}  # fmt: skip
    errors: dict[str, BaseException | None] = {}

    async def write(name: str, params: dict[str, Any]) -> None:
        try:
            await store._write([(_FINISH_ATTEMPT, params)])
            errors[name] = None
        except StoreError as exc:
            errors[name] = exc

    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as writes:
                writes.start_soon(write, "short", {k: v for k, v in good.items() if k != "b_at"})
                writes.start_soon(write, "good", good | {"b_id": "a1"})
                await anyio.wait_all_tasks_blocked()  # both queued: the writer takes both
                await outer.start(store.run)
            store.close()
    await store.aclose()
    rows = await fetch(any_store_url, "SELECT ended_at FROM attempts WHERE id = 'a1'")
    assert errors["good"] is None
    assert str(rows[0][0]).startswith(later.strftime("%Y-%m-%d %H:%M:%S"))


def test_the_shipped_head_names_the_newest_migration() -> None:
    from dispatch.store.migrate import SHIPPED_HEAD

    # A start on an up-to-date store skips Alembic by comparing with this constant: a new
    # migration must move it, or stores would never be upgraded to it.
    assert head_revision() == SHIPPED_HEAD


async def test_a_value_of_the_wrong_type_fails_its_write_alone(store: Store) -> None:
    # A third-party agent's end with a start time that is not a datetime: that write is
    # refused, the writer goes on, and the writes around it are committed.
    await intent(store, "a1", "r1")
    await intent(store, "a2", "r2")
    outcomes: dict[str, BaseException | None] = {}

    async def end(attempt: str, record: str, started_at: Any) -> None:
        try:
            await store.finished(
                attempt_id=attempt,
                strategy="s",
                record_id=record,
                state=AttemptState.COMPLETED,
                record_state=RecordState.COMPLETED,
                reason="hangup",
                call_id=None,
                duration=1.0,
                at=NOW,
                started_at=started_at,
            )
            outcomes[attempt] = None
        except StoreError as exc:
            outcomes[attempt] = exc

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(end, "a1", "r1", "yesterday")
            tg.start_soon(end, "a2", "r2", NOW)
    assert isinstance(outcomes["a1"], StoreError)
    assert outcomes["a2"] is None
    await intent(store, "a3", "r3")  # the writer is still there
    assert await fetch(_plain(store), "SELECT id, state FROM attempts ORDER BY id") == [
        ("a1", "dialing"),
        ("a2", "completed"),
        ("a3", "dialing"),
    ]


async def test_a_caller_already_cancelled_writes_nothing(store: Store) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await intent(store, "a1", "r1")  # an intent for a dial that will not happen
    await intent(store, "a2", "r2")
    assert await fetch(_plain(store), "SELECT id FROM attempts") == [("a2",)]


def test_sqlite_times_are_written_as_sqlalchemy_writes_them() -> None:
    # The store's own (faster) SQLite processor must write the very text SQLAlchemy's does:
    # SQLite compares times as text (`dialed_at > :since`), and reads them back by its format.
    from datetime import timezone

    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    from dispatch.store.models import UtcDateTime

    dialect = sqlite.dialect()
    ours = UtcDateTime().dialect_impl(dialect).bind_processor(dialect)
    theirs = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None
    assert theirs is not None
    for value in (
        datetime(2026, 1, 5, 15, 0, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(987, 6, 5, 4, 3, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=-5))),
        None,
    ):
        assert ours(value) == theirs(value), value
