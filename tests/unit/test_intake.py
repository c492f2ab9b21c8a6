"""The intake decision (one pure function for `dispatch run` and `dispatch check`), and intake
at scale: a huge poll never stalls the event loop."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest

from dispatch import DispatchHub, Malformed, Record, RecordState, Removed, SkipReason, Strategy
from dispatch.admission import Admission
from dispatch.intake import Admit, Done, Ignore, Refuse, Wait, Withdraw, decide
from dispatch.store import KnownRecord
from dispatch.testing import ManualClock, ScriptedAgent
from tests.support import PHONES, rec, store_for

A = PHONES[0]
CLOCK = ManualClock()
ADMISSION = Admission(default_region="US", clock=CLOCK)
BAD_ROWS = int(os.environ.get("DISPATCH_STRESS_BAD_ROWS", "200000"))  # the size CI runs


def verdict(
    item: Record | Malformed | Removed,
    known: KnownRecord | None = None,
    *,
    queued: bool = False,
    in_flight: bool = False,
    incremental: bool = False,
) -> object:
    return decide(
        item,
        known=known,
        queued=queued,
        in_flight=in_flight,
        incremental=incremental,
        admission=ADMISSION,
    )


def test_a_new_record_is_admitted_with_its_number_in_e164() -> None:
    result = verdict(rec("r1", "(415) 555-2600"))
    assert isinstance(result, Admit)
    assert result.record.phone == "+14155552600"


def test_a_record_finished_earlier_is_done_whatever_the_source_says() -> None:
    for state in (RecordState.COMPLETED, RecordState.FAILED, RecordState.INTERRUPTED):
        assert verdict(rec("r1", A), KnownRecord(state, 1)) == Done("r1", state)


def test_a_queued_record_is_ignored_unless_an_incremental_source_replaces_it() -> None:
    assert isinstance(verdict(rec("r1", A), queued=True), Ignore)
    assert isinstance(verdict(rec("r1", A), queued=True, in_flight=True, incremental=True), Ignore)
    replaced = verdict(rec("r1", A, greeting="edited"), queued=True, incremental=True)
    assert isinstance(replaced, Admit)
    assert replaced.replaces


def test_a_removed_record_is_withdrawn_only_while_queued_and_not_in_a_call() -> None:
    assert verdict(Removed("r1"), queued=True, incremental=True) == Withdraw("r1")
    assert isinstance(verdict(Removed("r1"), queued=True, in_flight=True, incremental=True), Ignore)
    assert isinstance(verdict(Removed("r1"), incremental=True), Ignore)


def test_bad_data_is_refused_and_a_fixed_row_of_an_incremental_source_is_dialed() -> None:
    refused = verdict(rec("r1", "12"))
    assert isinstance(refused, Refuse)
    assert refused.skip.reason is SkipReason.INVALID_PHONE
    malformed = verdict(Malformed("line:3", "line 3: no phone", line=3))
    assert isinstance(malformed, Refuse)
    assert malformed.skip.reason is SkipReason.MALFORMED

    skipped = KnownRecord(RecordState.SKIPPED, 0, None, SkipReason.INVALID_PHONE, "12")
    assert verdict(rec("r1", A), skipped) == Done("r1", RecordState.SKIPPED)  # not incremental
    assert isinstance(verdict(rec("r1", A), skipped, incremental=True), Admit)  # fixed
    # Still broken the same way: reported once already.
    assert verdict(rec("r1", "12"), skipped, incremental=True) == Done("r1", RecordState.SKIPPED)


def test_a_record_not_yet_due_or_due_for_a_retry_waits() -> None:
    later = CLOCK.now() + timedelta(minutes=5)
    waiting = verdict(rec("r1", A, not_before=later))
    assert isinstance(waiting, Wait)
    assert (waiting.until, waiting.why) == (later, "not_before")
    retry = verdict(rec("r1", A), KnownRecord(RecordState.RETRY, 1, later))
    assert isinstance(retry, Wait)
    assert (retry.until, retry.why) == (later, "retry")


def test_a_record_out_of_attempts_is_done_whatever_its_state_says() -> None:
    # A recovery put it back to retry, or retry_attempts was lowered since its last dial.
    retry = KnownRecord.of(RecordState.RETRY, 2)
    done = decide(
        rec("r1", A),
        known=retry,
        queued=False,
        in_flight=False,
        incremental=False,
        admission=ADMISSION,
        max_dials=2,
    )
    assert isinstance(done, Done)
    assert "no attempts left" in done.why
    assert isinstance(verdict(rec("r1", A), retry), Admit)  # no cap given: not refused


def test_an_id_too_long_for_the_store_is_refused_under_a_stable_short_id() -> None:
    first = verdict(rec("x" * 600, A))
    again = verdict(rec("x" * 600, A))
    assert isinstance(first, Refuse)
    assert first == again
    assert first.record.id.startswith("long-id:")
    assert len(first.record.id) < 500
    assert first.skip.reason is SkipReason.MALFORMED


class Flood(Strategy):
    """One poll of ``count`` records: numbers that cannot be dialed, or good ones."""

    def __init__(self, count: int, *, good: bool = False) -> None:
        super().__init__("flood")
        self.count = count
        self.good = good
        self.asked = anyio.Event()  # the hub polls
        self.go = anyio.Event()  # the test's ticker runs: hand the records over

    async def poll(self) -> list[Record]:
        phone = "+1415{:07d}" if self.good else "bad-{}"
        records = [Record(id=f"r{n}", phone=phone.format(2_000_000 + n)) for n in range(self.count)]
        self.asked.set()
        await self.go.wait()
        return records


def taken_in(hub: DispatchHub, count: int) -> bool:
    stats = hub.statistics()
    return stats.skipped + stats.pending + stats.rate_limited + stats.dialed >= count


@pytest.mark.anyio
@pytest.mark.parametrize("good", [False, True], ids=["bad numbers", "good numbers"])
async def test_a_poll_of_200000_records_never_stalls_the_event_loop(
    sqlite_url: str, good: bool
) -> None:
    # Bad numbers: 200,000 skips to commit; good ones: 200,000 numbers to normalise and
    # queue (one dial a minute: they stay queued).
    clock = ManualClock()
    source = Flood(BAD_ROWS, good=good)
    hub = DispatchHub(
        agent=ScriptedAgent(),
        strategies=[source],
        store=store_for(sqlite_url, clock),
        clock=clock,
        poll_interval=10_000.0,
        max_calls_per_minute=1,
    )
    longest = busiest = 0.0
    most_tasks = 0

    async def ticker() -> None:
        # Between two ticks: the wall time, and the CPU time of the event loop's thread.
        # A stall of ours is both; a machine busy with other work delays the tick without
        # the loop doing anything (wall time only), which is not what this test is about.
        nonlocal longest, busiest, most_tasks
        last, last_cpu = time.perf_counter(), time.thread_time()
        while True:
            await anyio.sleep(0.005)
            now, cpu = time.perf_counter(), time.thread_time()
            longest = max(longest, now - last)
            busiest = max(busiest, cpu - last_cpu)
            most_tasks = max(most_tasks, len(asyncio.all_tasks()))
            last, last_cpu = now, cpu

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.asked.wait()
            tg.start_soon(ticker)
            await anyio.sleep(0.02)  # the ticker has ticked: it measures from here on
            source.go.set()
            # A counter with no event to wait on: checked now and then, not an ordering.
            while not taken_in(hub, BAD_ROWS):  # noqa: ASYNC110
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    assert busiest < 0.1, f"the event loop ran {busiest * 1000:.0f} ms without a break"
    assert longest < 0.5, f"the event loop stalled for {longest * 1000:.0f} ms"
    assert most_tasks < 50  # a task per admitted dial, never one per record


class Streamed(Strategy):
    """An async generator poll that waits (for I/O, as a SQL cursor would) between records."""

    def __init__(self) -> None:
        super().__init__("streamed")
        self.gc_enabled_while_waiting: list[bool] = []

    async def poll(self):  # type: ignore[no-untyped-def]
        for n in range(3):
            await anyio.lowlevel.checkpoint()
            self.gc_enabled_while_waiting.append(gc.isenabled())
            yield Record(id=f"r{n}", phone=f"bad-{n}")


@pytest.mark.anyio
async def test_the_cyclic_gc_is_on_whenever_intake_waits(sqlite_url: str) -> None:
    # The collector is process-wide: an application embedding the hub must never find it off
    # while the hub waits for its source (or an outage holds its skips).
    clock = ManualClock()
    source = Streamed()
    hub = DispatchHub(
        agent=ScriptedAgent(),
        strategies=[source],
        store=store_for(sqlite_url, clock),
        clock=clock,
        poll_interval=10_000.0,
        exit_when_done=True,
    )
    with anyio.fail_after(10):
        await hub.run()
    assert source.gc_enabled_while_waiting == [True, True, True]
