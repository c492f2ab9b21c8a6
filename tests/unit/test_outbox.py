"""Callbacks are delivered from the outbox: at least once, in order per record, retried with
backoff, across restarts, and never in the way of dialing."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import pytest

from dispatch import DispatchHub, Record, RecordState, SkipReason, Store, Strategy
from dispatch.outbox import Backoff, Outbox
from dispatch.store import Skipped
from dispatch.store.outbox import Callback
from dispatch.testing import ManualClock, ScriptedAgent
from tests.conftest import fetch
from tests.support import PHONES, ListStrategy, rec, store_for

pytestmark = pytest.mark.anyio

A, B = PHONES[:2]
BACKOFF = Backoff(initial=10.0, maximum=60.0)


class Flaky(ListStrategy):
    """on_completed raises for its first `failures` calls."""

    def __init__(self, records: list[Record], failures: int) -> None:
        super().__init__(records)
        self.failures = failures
        self.tries = 0

    async def on_completed(self, record: Record, call_id: str, reason: str) -> None:
        self.tries += 1
        self.signal.notify()
        if self.tries <= self.failures:
            raise ConnectionError(f"CRM down (try {self.tries})")
        await super().on_completed(record, call_id, reason)

    async def wait_for_tries(self, count: int) -> None:
        await self.signal.wait_until(lambda: self.tries >= count)


def hub_for(url: str, source: ListStrategy, clock: ManualClock, **options: Any) -> DispatchHub:
    return DispatchHub(
        agent=ScriptedAgent(),
        strategies=[source],
        store=store_for(url, clock),
        clock=clock,
        poll_interval=1000.0,
        callback_backoff=BACKOFF,
        **options,
    )


async def outbox_rows(url: str) -> list[tuple[Any, ...]]:
    return await fetch(
        url, "SELECT callback, deliveries, delivered_at IS NOT NULL FROM outbox ORDER BY id"
    )


async def retry_until_delivered(clock: ManualClock, source: Flaky, start: int) -> None:
    """Advance through the backoff delays until the 4th try; check each is exactly on time."""
    for tries in range(start, 4):
        await source.wait_for_tries(tries)
        delay = BACKOFF.delay(tries)
        await clock.wait_for_deadline(clock.monotonic() + delay)  # the outbox's retry
        clock.advance(delay - 0.5)
        await clock.wait_all_tasks_blocked()
        assert clock.monotonic() + 0.5 in clock.deadlines  # not before its time
        assert source.tries == tries
        clock.advance(0.5)
    await source.signal.wait_until(lambda: bool(source.named("completed")))


async def test_a_callback_failing_three_times_is_delivered_on_the_fourth(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    source = Flaky([rec("r1", A)], failures=3)
    hub = hub_for(sqlite_url, source, clock)

    with caplog.at_level(logging.ERROR), anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await retry_until_delivered(clock, source, start=1)
            hub.stop()

    assert source.tries == 4
    assert [e[0] for e in source.events] == ["dispatched", "completed"]
    assert await outbox_rows(sqlite_url) == [("on_dispatched", 0, 1), ("on_completed", 3, 1)]
    failures = [r.getMessage() for r in caplog.records if "callback.failed" in r.getMessage()]
    assert len(failures) == 3
    assert (
        "record=r1 delivery=1 error=ConnectionError: CRM down (try 1) retry_in=10s" in failures[0]
    )


async def test_a_failing_callback_is_delivered_after_a_restart(sqlite_url: str) -> None:
    clock = ManualClock()
    source = Flaky([rec("r1", A)], failures=3)
    with anyio.fail_after(10):
        await hub_for(sqlite_url, source, clock, exit_when_done=True).run()
    assert source.tries == 1  # failed once; the retry is due after the process stopped
    assert await outbox_rows(sqlite_url) == [("on_dispatched", 0, 1), ("on_completed", 1, 0)]

    later = ManualClock(wall=clock.now() + timedelta(seconds=BACKOFF.delay(1)))
    restarted = Flaky([rec("r1", A)], failures=3)
    restarted.tries = source.tries  # the CRM stays down for two more tries
    hub = hub_for(sqlite_url, restarted, later)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await retry_until_delivered(later, restarted, start=2)
            hub.stop()

    assert restarted.tries == 4
    assert restarted.named("completed") == [("completed", "r1", "call-1", "hangup")]
    assert restarted.named("dispatched") == []  # delivered in the first run, not again
    assert await outbox_rows(sqlite_url) == [("on_dispatched", 0, 1), ("on_completed", 3, 1)]


async def test_a_failing_callback_holds_back_its_own_record_only(sqlite_url: str) -> None:
    clock = ManualClock()

    class DispatchFails(ListStrategy):
        def on_dispatched(self, record: Record, call_id: str) -> None:
            if record.id == "r1" and not self.named("dispatched-failed"):
                self._event("dispatched-failed", record)
                raise RuntimeError("not yet")
            super().on_dispatched(record, call_id)

    source = DispatchFails([rec("r1", A), rec("r2", B)])
    hub = hub_for(sqlite_url, source, clock, max_concurrent=2)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.signal.wait_until(
                lambda: bool(source.named("dispatched-failed")) and bool(source.named("completed"))
            )
            assert [e[0] for e in source.events if e[1] == "r1"] == ["dispatched-failed"]
            assert [e[0] for e in source.events if e[1] == "r2"] == ["dispatched", "completed"]
            await clock.wait_for_deadline(BACKOFF.delay(1))  # r1's retry
            clock.advance(BACKOFF.delay(1))
            await source.wait_for_events(5)
            hub.stop()

    assert [e[0] for e in source.events if e[1] == "r1"] == [
        "dispatched-failed",
        "dispatched",
        "completed",
    ]


async def test_a_slow_callback_never_delays_dialing(sqlite_url: str) -> None:
    release = anyio.Event()

    class Slow(ListStrategy):
        async def on_dispatched(self, record: Record, call_id: str) -> None:  # type: ignore[override]
            await release.wait()
            super().on_dispatched(record, call_id)

    agent = ScriptedAgent()
    source = Slow([rec(f"r{n}", PHONES[n]) for n in range(5)])
    hub = DispatchHub(
        agent=agent,
        strategies=[source],
        store=sqlite_url,
        clock=ManualClock(),
        max_concurrent=2,
        exit_when_done=True,
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(5)  # every dial happened with the first callback stuck
            assert source.events == []
            release.set()

    assert len(source.named("dispatched")) == 5
    assert len(source.named("completed")) == 5


async def test_a_callback_that_times_out_is_retried(sqlite_url: str) -> None:
    clock = ManualClock()
    hang = anyio.Event()  # never set: the first delivery hangs until its timeout

    class Hangs(ListStrategy):
        async def on_dispatched(self, record: Record, call_id: str) -> None:  # type: ignore[override]
            self._event("try", record)
            if len(self.named("try")) == 1:
                await hang.wait()
            super().on_dispatched(record, call_id)

    source = Hangs([rec("r1", A)])
    hub = hub_for(sqlite_url, source, clock, callback_timeout=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.signal.wait_until(lambda: len(source.named("try")) == 1)
            await clock.wait_for_deadline(BACKOFF.delay(1))  # timed out; the retry scheduled
            clock.advance(BACKOFF.delay(1))
            await source.signal.wait_until(lambda: bool(source.named("completed")))
            hub.stop()

    assert [e[0] for e in source.events] == ["try", "try", "dispatched", "completed"]
    assert await outbox_rows(sqlite_url) == [("on_dispatched", 1, 1), ("on_completed", 0, 1)]


async def final_pass(url: str, skips: list[tuple[Record, SkipReason]], batch: int) -> ListStrategy:
    """Commit an on_skipped callback per entry, then run only the outbox's last pass (as the
    hub does once its calls are over); return the strategy that received the deliveries."""
    source = ListStrategy()
    clock = ManualClock()
    store = Store(url)
    await store.open()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            for record, reason in skips:
                callback = Callback("list", "on_skipped", record, (reason.value,))
                skip = Skipped("list", record.id, record.phone, RecordState.SKIPPED, reason, 0)
                await store.skipped([replace(skip, callback=callback)], at=clock.now())
            outbox = Outbox(store, {"list": source}, clock=clock, batch=batch)
            outbox.finish()
            await outbox.run()
            store.close()
    await store.aclose()
    return source


async def test_the_final_pass_delivers_every_due_callback_not_just_one_batch(
    sqlite_url: str,
) -> None:
    skips = [(rec(f"r{n}", PHONES[n]), SkipReason.EXPIRED) for n in range(5)]
    source = await final_pass(sqlite_url, skips, batch=2)
    assert sorted(e[1] for e in source.events) == ["r0", "r1", "r2", "r3", "r4"]


async def test_the_final_pass_delivers_what_a_records_earlier_callback_held_back(
    sqlite_url: str,
) -> None:
    # Two callbacks of one record: the second waits for the first to be delivered.
    record = rec("r0", A)
    skips = [(record, SkipReason.EXPIRED), (record, SkipReason.INVALID_PHONE)]
    source = await final_pass(sqlite_url, skips, batch=500)
    assert source.events == [
        ("skipped", "r0", "expired"),
        ("skipped", "r0", "invalid_phone"),
    ]


async def test_a_blocking_sync_callback_runs_in_a_thread_and_never_delays_a_dial(
    sqlite_url: str,
) -> None:
    # on_dispatched blocks its thread until every dial has happened. Run on the event loop,
    # it would freeze the loop (no further dial) until its 5 s safety timeout: the dials
    # would come after it gave up.
    import threading

    everyone_dialed = threading.Event()
    gave_up: list[str] = []

    class Blocking(ListStrategy):
        def on_dispatched(self, record: Record, call_id: str) -> None:
            if not everyone_dialed.wait(timeout=5):
                gave_up.append(record.id)
            super().on_dispatched(record, call_id)

    agent = ScriptedAgent()
    source = Blocking([rec(f"r{n}", PHONES[n]) for n in range(10)])
    hub = DispatchHub(
        agent=agent,
        strategies=[source],
        store=store_for(sqlite_url, ManualClock()),
        clock=ManualClock(),
        max_concurrent=1,  # one call after the other: each dial needs the loop to be free
        exit_when_done=True,
    )
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(10)
            everyone_dialed.set()
    assert gave_up == []
    assert len(source.named("dispatched")) == 10


async def test_a_sync_callback_past_its_timeout_is_left_to_its_thread_and_retried(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The first on_dispatched never returns by itself: the outbox gives up on it at the
    # callback timeout (the thread is left to finish on its own), and delivers it again.
    import threading

    release = threading.Event()
    tries: list[str] = []

    class Stuck(ListStrategy):
        def on_dispatched(self, record: Record, call_id: str) -> None:
            tries.append(record.id)
            if len(tries) == 1:
                release.wait(timeout=30)
                return
            super().on_dispatched(record, call_id)

    clock = ManualClock()
    agent = ScriptedAgent()
    source = Stuck([rec("r1", PHONES[1])])
    hub = DispatchHub(
        agent=agent,
        strategies=[source],
        store=store_for(sqlite_url, clock),
        clock=clock,
        callback_timeout=0.5,
        callback_backoff=Backoff(initial=1.0, maximum=1.0),
    )
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                await clock.wait_until(lambda: 1.0 in clock.deadlines)  # timed out: backoff
                clock.advance(1.0)
                await source.signal.wait_until(lambda: bool(source.named("dispatched")))
                hub.stop()
    finally:
        release.set()
    assert tries == ["r1", "r1"]
    assert (
        "callback.failed strategy=list callback=on_dispatched record=r1 delivery=1 "
        "error=TimeoutError: ran past its 0.5s timeout retry_in=1s"
    ) in caplog.text


# asyncio's debug mode refuses an event loop's state touched from another thread.
# Without the hand-over, the wake-up is lost and the hub hangs: the timeout turns that red.
@pytest.mark.timeout(30, method="thread")
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"debug": True}), id="debug")])
async def test_a_sync_callback_may_ask_for_a_poll_or_stop_the_hub_from_its_thread(
    sqlite_url: str,
) -> None:
    class Reacts(ListStrategy):
        def on_completed(self, record: Record, call_id: str, reason: str) -> None:  # type: ignore[override]
            if record.id == "r1":
                self.records.append(rec("r2", B))
                try:
                    self.poll_now()  # from a worker thread: reaches the event loop safely
                except RuntimeError as error:  # debug mode's "non-thread-safe operation"
                    refused.append(error)
                    hub.stop()
            else:
                hub.stop()  # likewise
            super()._event("completed", record, call_id, reason)

    refused: list[RuntimeError] = []
    clock = ManualClock()
    agent = ScriptedAgent()
    source = Reacts([rec("r1", A)])
    hub = DispatchHub(
        agent=agent,
        strategies=[source],
        store=store_for(sqlite_url, clock),
        clock=clock,
        poll_interval=10_000.0,  # r2 comes in only through the callback's poll_now()
    )
    with anyio.fail_after(10):
        await hub.run()  # returns: r2's callback stopped it
    assert refused == []
    assert [d.to for d in agent.dials] == [A, B]  # and r2's callback stopped the hub


class Silent(Strategy):
    """A strategy that leaves every callback as the base no-op."""

    def __init__(self, records: list[Record]) -> None:
        super().__init__("silent")
        self.records = records

    async def poll(self) -> list[Record]:
        return self.records


async def test_no_outbox_row_is_written_for_a_callback_nobody_listens_to(sqlite_url: str) -> None:
    strategy = Silent([rec("r1", PHONES[0]), rec("bad", "12")])
    completed: list[str] = []
    strategy.on_completed = lambda record, call_id, reason: completed.append(record.id)  # type: ignore[method-assign]
    hub = DispatchHub(
        agent=ScriptedAgent(),
        strategies=[strategy],
        store=store_for(sqlite_url, ManualClock()),
        clock=ManualClock(),
        exit_when_done=True,
    )
    with anyio.fail_after(10):
        await hub.run()
    rows = await fetch(sqlite_url, "SELECT record_id, callback FROM outbox ORDER BY id")
    assert rows == [("r1", "on_completed")]  # not on_dispatched, not on_skipped
    assert completed == ["r1"]
    assert not Silent([]).listens("on_completed")
    assert strategy.listens("on_completed")


async def test_a_webhook_still_gets_its_row_when_the_strategy_does_not_listen(
    sqlite_url: str,
) -> None:
    store = Store(sqlite_url)
    await store.open()
    store.listening = lambda strategy, callback: False
    store.route_webhooks({"on_skipped": ["webhook:crm"]})
    record = Record(id="bad", phone="12")
    callback = Callback("list", "on_skipped", record, ("invalid_phone",))
    skip = Skipped("list", "bad", "12", RecordState.SKIPPED, SkipReason.INVALID_PHONE, 0, callback)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await store.skipped([skip], at=ManualClock().now())
        store.close()
    await store.aclose()
    assert await fetch(sqlite_url, "SELECT strategy, record_id FROM outbox") == [
        ("webhook:crm", "list/bad")
    ]


class Writing(Silent):
    """Overrides ``deliver`` (as the CSV write-back does) and calls the base after its work."""

    def __init__(self) -> None:
        super().__init__([])
        self.delivered: list[str] = []

    async def deliver(self, callback: Any, record: Record, *args: Any) -> None:
        self.delivered.append(callback)
        await super().deliver(callback, record, *args)


async def test_a_base_no_op_callback_under_an_overridden_deliver_takes_no_worker_thread() -> None:
    strategy = Writing()
    assert strategy.listens("on_dispatched")  # its deliver does something with every row
    limiter = anyio.to_thread.current_default_thread_limiter()
    total = limiter.total_tokens
    limiter.total_tokens = 1
    try:
        async with limiter:  # every worker thread is taken: a thread hop would wait here
            with anyio.fail_after(5):
                await strategy.deliver("on_dispatched", rec("r1", A), "call-1")
    finally:
        limiter.total_tokens = total
    assert strategy.delivered == ["on_dispatched"]


async def test_plain_callbacks_run_in_threads_of_their_own(sqlite_url: str) -> None:
    # Every thread of anyio's default limiter is taken (as by slow CSV reads or write-backs):
    # a plain on_completed still runs, in the outbox's own threads.
    strategy = ListStrategy([rec("r1", A)])
    completed: list[str] = []
    strategy.on_completed = lambda record, call_id, reason: completed.append(record.id)  # type: ignore[method-assign]
    clock = ManualClock()
    hub = DispatchHub(
        agent=ScriptedAgent(),
        strategies=[strategy],
        store=store_for(sqlite_url, clock),
        clock=clock,
        exit_when_done=True,
    )
    limiter = anyio.to_thread.current_default_thread_limiter()
    total = limiter.total_tokens
    limiter.total_tokens = 1
    try:
        async with limiter:
            with anyio.fail_after(10):
                await hub.run()
    finally:
        limiter.total_tokens = total
    assert completed == ["r1"]
