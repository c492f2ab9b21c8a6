"""Several daemons on one PostgreSQL: claims, the shared limits, instances coming and going,
and who delivers the callbacks. Each "daemon" here is a Store of its own on the real
database, as in separate processes."""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import pytest
from sqlalchemy.exc import DBAPIError

from dispatch import DialRequest, DispatchHub, Heartbeat, Pacing, Record, Store
from dispatch.clock import SystemClock
from dispatch.errors import StoreError, StoreInUse, StoreUnavailable
from dispatch.rules.caps import Caps
from dispatch.states import AttemptState, RecordState
from dispatch.store import DoNotCall, Skipped, cluster
from dispatch.store import outbox as ob
from dispatch.store.cluster import Claimed, ClusterBusy, ClusterLimits, NotYet, Taken
from dispatch.store.models import attempts
from dispatch.testing import ManualClock, ScriptedAgent
from tests.conftest import fetch
from tests.support import PHONES, QUIET_HEARTBEAT, ListStrategy, rec

pytestmark = pytest.mark.anyio

A, B, C = PHONES[:3]
OPEN = ClusterLimits(max_concurrent=10, max_calls_per_minute=None, window=60.0, hold=600.0,
                     caps=Caps())  # fmt: skip
BEAT = Heartbeat(interval=1.0, timeout=3.0)
T = TypeVar("T")


class Daemon:
    """One daemon's store, registered, with its writer running."""

    def __init__(self, url: str, clock: ManualClock) -> None:
        self.store = Store(url, clock=clock, heartbeat=BEAT, cluster=True)
        self.clock = clock

    async def claim(self, record_id: str, phone: str, limits: ClusterLimits = OPEN,
                    number: int = 1, **kw: Any) -> Any:  # fmt: skip
        return await self.store.claim_dial(
            attempt_id=kw.pop("attempt_id", uuid.uuid4().hex),
            strategy="list",
            record_id=record_id,
            number=number,
            phone=phone,
            at=self.clock.now(),
            limits=limits,
        )


@pytest.fixture
async def daemons(postgres_url: str) -> AsyncIterator[tuple[Daemon, Daemon, ManualClock]]:
    clock = ManualClock()
    one, two = Daemon(postgres_url, clock), Daemon(postgres_url, clock)
    async with anyio.create_task_group() as tg:
        for daemon in (one, two):
            await daemon.store.open()
            await tg.start(daemon.store.run)
            assert await daemon.store.claim() == []  # the second is not refused
        yield one, two, clock
        for daemon in (one, two):
            daemon.store.close()
    for daemon in (one, two):
        await daemon.store.aclose()


async def test_a_record_is_claimed_by_one_daemon_and_the_other_learns_its_state(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, _ = daemons
    assert isinstance(await one.claim("r1", A), Claimed)
    taken = await two.claim("r1", A)
    assert taken == Taken(RecordState.DIALING, 1, None)
    rows = await fetch(one.store.url.render_as_string(False), "SELECT owner FROM attempts")
    assert rows == [(one.store.instance.id,)]  # type: ignore[union-attr]


async def test_a_claim_whose_answer_was_lost_is_claimed_again_by_its_id(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, _, _ = daemons
    assert isinstance(await one.claim("r1", A, attempt_id="same"), Claimed)
    assert isinstance(await one.claim("r1", A, attempt_id="same"), Claimed)


async def test_the_concurrency_cap_and_the_number_are_shared(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, _ = daemons
    single = ClusterLimits(1, None, 60.0, 600.0, Caps())
    assert isinstance(await one.claim("r1", A, single), Claimed)
    full = await two.claim("r2", B, single)
    assert isinstance(full, NotYet)
    assert (full.why, full.shared) == ("concurrency", True)
    busy = await two.claim("r3", A)  # A is in a call at the other daemon
    assert isinstance(busy, NotYet)
    assert (busy.why, busy.shared) == ("number in a call", False)


async def test_the_rate_window_is_shared_and_says_when_it_opens(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    limits = ClusterLimits(10, 2, 60.0, 600.0, Caps())
    start = clock.now()
    assert isinstance(await one.claim("r1", A, limits), Claimed)
    clock.advance(10)
    assert isinstance(await two.claim("r2", B, limits), Claimed)
    clock.advance(10)
    limited = await one.claim("r3", C, limits)
    assert limited == NotYet(start + timedelta(seconds=60), "rate limit", shared=True)
    clock.advance(40)  # the first start leaves the window
    assert isinstance(await two.claim("r3", C, limits), Claimed)


async def test_a_numbers_caps_count_the_dials_of_every_daemon(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    limits = ClusterLimits(10, None, 60.0, 600.0, Caps(per_24h=1))
    first = clock.now()
    assert isinstance(await one.claim("r1", A, limits, attempt_id="a1"), Claimed)
    clock.advance(60)
    await one.store.finished(
        attempt_id="a1",
        strategy="list",
        record_id="r1",
        state=AttemptState.COMPLETED,
        record_state=RecordState.COMPLETED,
        reason="hangup",
        call_id="c1",
        duration=60.0,
        at=clock.now(),
    )
    capped = await two.claim("r2", A, limits)
    assert capped == NotYet(first + timedelta(days=1), "cap: 1 per 24 h")


async def test_a_dead_daemon_is_reaped_only_after_its_heartbeat_expires_and_only_its_calls(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    assert isinstance(await one.claim("r1", A), Claimed)
    assert isinstance(await two.claim("r2", B), Claimed)
    clock.advance(2)
    assert await two.store.beat()
    assert await two.store.reap() == []  # one's heartbeat is 2 s old: alive
    clock.advance(2)  # now 4 s: expired (one stopped beating, as a SIGKILL leaves it)
    assert await two.store.beat()
    dead = await two.store.reap()
    assert [d.id for d in dead] == [one.store.instance.id]  # type: ignore[union-attr]
    assert await two.store.recover("interrupt", clock.now()) == 1  # r1 only
    url = one.store.url.render_as_string(False)
    states = await fetch(url, "SELECT record_id, state FROM attempts ORDER BY record_id")
    assert states == [("r1", "interrupted"), ("r2", "dialing")]
    held = await two.claim("r3", A)  # r1's number may still be in a call: held
    assert held == NotYet(clock.now() + timedelta(seconds=600), "held: may still be in a call")


async def test_each_daemon_delivers_its_own_callbacks_and_adopts_the_deads(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    for daemon, record_id in ((one, "r1"), (two, "r2")):
        record = Record(id=record_id, phone="12")
        callback = ob.Callback("list", "on_skipped", record, ("invalid_phone",))
        skip = Skipped("list", record_id, "12", RecordState.SKIPPED, "invalid_phone", 0, callback)
        await daemon.store.skipped([skip], at=clock.now())
    mine = await ob.due(two.store.engine, clock.now(), owner=two.store.owner)
    assert [r.callback.record.id for r in mine] == ["r2"]
    clock.advance(4)
    assert await two.store.beat()
    await two.store.reap()  # one is gone: its rows are two's to deliver
    adopted = await ob.due(two.store.engine, clock.now(), owner=two.store.owner)
    assert sorted(r.callback.record.id for r in adopted) == ["r1", "r2"]


async def test_a_cluster_needs_postgresql(sqlite_url: str) -> None:
    with pytest.raises(StoreError, match="need PostgreSQL"):
        Store(sqlite_url, cluster=True)


async def test_daemons_starting_together_migrate_one_after_the_other(postgres_url: str) -> None:
    stores = [Store(postgres_url) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)  # each migrates the empty database
    finally:
        for store in stores:
            await store.aclose()
    assert await fetch(postgres_url, "SELECT version_num FROM alembic_version") == [("0010",)]


async def test_a_daemon_judged_dead_claims_nothing_more(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    assert isinstance(await one.claim("r1", A, attempt_id="a1"), Claimed)
    clock.advance(4)  # one's heartbeat expired: two reaps it and recovers r1
    assert await two.store.beat()
    await two.store.reap()
    assert await two.store.recover("interrupt", clock.now()) == 1
    with pytest.raises(StoreInUse, match="recovered its calls"):
        await one.claim("r1", A, attempt_id="a1")  # its lost-answer retry, say
    with pytest.raises(StoreInUse):
        await one.claim("r2", B)


async def test_two_daemons_recovering_at_once_recover_each_attempt_once(
    daemons: tuple[Daemon, Daemon, ManualClock],
    postgres_url: str,
) -> None:
    one, two, clock = daemons
    third = Daemon(postgres_url, clock)
    await third.store.open()
    async with anyio.create_task_group() as tg:
        await tg.start(third.store.run)
        await third.store.claim()
        for n in range(20):
            wide = ClusterLimits(100, None, 60.0, 600.0, Caps())
            assert isinstance(await third.claim(f"r{n}", PHONES[n], wide), Claimed)
        clock.advance(4)  # the third stops beating
        counts: list[int] = []
        for daemon in (one, two):
            assert await daemon.store.beat()
        for daemon in (one, two):
            await daemon.store.reap()

        async def recover(daemon: Daemon) -> None:
            counts.append(await daemon.store.recover("interrupt", clock.now()))

        async with anyio.create_task_group() as both:
            both.start_soon(recover, one)
            both.start_soon(recover, two)
        third.store.close()
    await third.store.aclose()
    assert sorted(counts) == [0, 20]
    failed = "SELECT count(*) FROM outbox WHERE callback = 'on_failed'"
    assert await fetch(postgres_url, failed) == [(20,)]


async def test_a_skip_decided_on_a_stale_view_never_undoes_another_daemons_outcome(
    daemons: tuple[Daemon, Daemon, ManualClock],
    postgres_url: str,
) -> None:
    one, two, clock = daemons
    assert isinstance(await one.claim("r1", A, attempt_id="a1"), Claimed)
    await one.store.finished(
        attempt_id="a1", strategy="list", record_id="r1", state=AttemptState.COMPLETED,
        record_state=RecordState.COMPLETED, reason="hangup", call_id="c1", duration=1.0,
        at=clock.now(),
    )  # fmt: skip
    skip = Skipped("list", "r1", A, RecordState.SKIPPED, "do_not_call", 0)
    await two.store.skipped([skip], at=clock.now())
    rows = await fetch(postgres_url, "SELECT state, attempts FROM records")
    assert rows == [("completed", 1)]


async def test_a_record_fixed_after_a_content_skip_is_claimed(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    skip = Skipped("list", "r1", "12", RecordState.SKIPPED, "invalid_phone", 0)
    await one.store.skipped([skip], at=clock.now())
    assert isinstance(await two.claim("r1", A), Claimed)


async def test_another_daemons_opt_out_holds_the_number_at_once(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    await one.store.add_do_not_call([DoNotCall(A, "result")], at=clock.now())
    listed = await two.claim("r1", A)
    assert isinstance(listed, NotYet)
    assert listed.why == "do-not-call"


async def test_a_live_daemons_unknown_call_holds_its_number_but_no_slot(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    single = ClusterLimits(1, None, 60.0, 600.0, Caps())
    assert isinstance(await one.claim("r1", A, single, attempt_id="a1"), Claimed)
    await one.store.finished(
        attempt_id="a1", strategy="list", record_id="r1", state=AttemptState.UNKNOWN,
        record_state=RecordState.FAILED, reason="no answer from the platform", call_id=None,
        duration=None, at=clock.now(),
    )  # fmt: skip
    assert isinstance(await two.claim("r2", B, single), Claimed)  # the slot is free
    held = await two.claim("r3", A)
    assert isinstance(held, NotYet)
    assert held.why == "held: may still be in a call"


async def test_cluster_and_single_daemons_never_share_a_store(postgres_url: str) -> None:
    clock = ManualClock()
    single = Store(postgres_url, clock=clock, heartbeat=BEAT)
    joiner = Store(postgres_url, clock=clock, heartbeat=BEAT, cluster=True)
    try:
        await single.open()
        await joiner.open()
        await single.claim()
        with pytest.raises(StoreInUse, match="without \\[cluster\\] enabled"):
            await joiner.claim()
        await single.release()
        await joiner.claim()
        with pytest.raises(StoreInUse, match="with \\[cluster\\] enabled \\(enable it here"):
            await single.claim()
    finally:
        await single.aclose()
        await joiner.aclose()


async def through(call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` once it gets the cluster's lock (each try gives up after LOCK_TIMEOUT)."""
    while True:
        try:
            return await call()
        except ClusterBusy:
            continue


async def test_a_daemon_frozen_holding_the_lock_holds_no_claim_up_for_long_and_is_cut_off(
    daemons: tuple[Daemon, Daemon, ManualClock], postgres_url: str
) -> None:
    one, two, clock = daemons
    assert isinstance(await one.claim("r1", A, attempt_id="a1"), Claimed)
    # A daemon frozen mid-claim (SIGSTOP): the lock taken, its intent written, no commit.
    frozen = await one.store.engine.connect()
    await frozen.begin()
    await cluster.lock(frozen)
    await frozen.execute(
        attempts.insert().values(id="a2", strategy="list", record_id="r2", number=1, phone=B,
                                 state="dialing", dialed_at=clock.now(), owner="frozen")
    )  # fmt: skip
    began = time.monotonic()
    with anyio.fail_after(cluster.LOCK_TIMEOUT + 0.5):
        busy = await two.claim("r3", C)
    assert busy == NotYet(busy.until, "cluster lock busy", shared=True)
    assert busy.until > clock.now()  # looked at again shortly, not never

    # The database ends the frozen session after HOLD_LIMIT: recovery and reaping go on.
    clock.advance(4)  # one stopped beating too
    assert await two.store.beat()
    with anyio.fail_after(cluster.HOLD_LIMIT + cluster.LOCK_TIMEOUT + 1):
        dead = await through(two.store.reap)
        recovered = await through(lambda: two.store.recover("interrupt", clock.now()))
    assert time.monotonic() - began < cluster.HOLD_LIMIT + cluster.LOCK_TIMEOUT + 1
    assert [d.id for d in dead] == [one.store.instance.id]  # type: ignore[union-attr]
    assert recovered == 1  # r1; the frozen claim of r2 was never committed
    rows = await fetch(postgres_url, "SELECT id, state FROM attempts ORDER BY id")
    assert rows == [("a1", "interrupted")]
    with pytest.raises(DBAPIError):
        await frozen.commit()  # thawed: its claim cannot commit, so it never dials
    await frozen.close()


async def test_a_start_counts_for_the_window_and_the_margin_its_dial_may_come_late(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    limits = ClusterLimits(10, 1, 60.0, 600.0, Caps(), margin=1.0)
    start = clock.now()
    assert isinstance(await one.claim("r1", A, limits), Claimed)
    clock.advance(60.5)  # the window has passed, not the margin: r1's dial may be this late
    limited = await two.claim("r2", B, limits)
    assert limited == NotYet(start + timedelta(seconds=61), "rate limit", shared=True)
    assert limited.wait(clock.now()) == 0.5  # measured on the clock that judged
    clock.advance(0.5)
    assert isinstance(await two.claim("r2", B, limits), Claimed)


async def test_a_dial_late_for_its_claim_is_stamped_again_only_where_the_window_has_room(
    daemons: tuple[Daemon, Daemon, ManualClock], postgres_url: str
) -> None:
    one, two, clock = daemons
    limits = ClusterLimits(10, 1, 60.0, 600.0, Caps(), margin=1.0)
    start = clock.now()
    assert isinstance(await one.claim("r1", A, limits, attempt_id="a1"), Claimed)
    clock.advance(5)  # its dial has not gone out: moved to now (alone in the window)
    again = await one.store.restamp_claim("a1", limits)
    assert again == Claimed(start + timedelta(seconds=5), again.since)  # type: ignore[union-attr]
    clock.advance(61)
    assert isinstance(await two.claim("r2", B, limits, attempt_id="a2"), Claimed)
    # a1 moved past a2's start would put both in one window: not before a2 leaves it.
    clock.advance(1)
    refused = await one.store.restamp_claim("a1", limits)
    assert refused == NotYet(start + timedelta(seconds=66 + 61), "rate limit", shared=True)
    stamps = await fetch(postgres_url, "SELECT id, dialed_at FROM attempts ORDER BY id")
    assert [t - start for _, t in stamps] == [timedelta(seconds=5), timedelta(seconds=66)]


async def test_a_claim_recovered_or_settled_meanwhile_is_never_stamped_again(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    assert isinstance(await one.claim("r1", A, attempt_id="a1"), Claimed)
    clock.advance(4)  # frozen past its heartbeat: two recovers a1
    assert await two.store.beat()
    await two.store.reap()
    assert await two.store.recover("interrupt", clock.now()) == 1
    with pytest.raises(StoreInUse):
        await one.store.restamp_claim("a1", OPEN)
    assert isinstance(await two.claim("r2", B, attempt_id="a2"), Claimed)
    await two.store.finished(
        attempt_id="a2", strategy="list", record_id="r2", state=AttemptState.UNKNOWN,
        record_state=RecordState.FAILED, reason="unknown", call_id=None, duration=None,
        at=clock.now(),
    )  # fmt: skip
    assert await two.store.restamp_claim("a2", OPEN) == Taken(RecordState.INTERRUPTED, 1, None)


async def test_the_ledger_tells_without_the_lock_which_queued_records_others_claimed(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    assert isinstance(await one.claim("r1", A), Claimed)
    skip = Skipped("list", "r2", "12", RecordState.SKIPPED, "invalid_phone", 0)
    await one.store.skipped([skip], at=clock.now())
    frozen = await one.store.engine.connect()  # the lock held: the read does not wait for it
    await frozen.begin()
    await cluster.lock(frozen)
    try:
        with anyio.fail_after(cluster.LOCK_TIMEOUT / 2):
            lost = await two.store.taken("list", {"r1": 1, "r2": 1, "r3": 1})
    finally:
        await frozen.rollback()
        await frozen.close()
    # r1 is in a call at one; r2 was skipped for its phone, which may have been fixed since;
    # r3 nobody has.
    assert lost == {"r1": Taken(RecordState.DIALING, 1, None)}


async def test_cluster_times_are_the_databases_whatever_a_hosts_clock_says(
    postgres_url: str,
) -> None:
    class Ahead(SystemClock):
        """A machine whose clock is an hour fast."""

        def now(self) -> datetime:
            return super().now() + timedelta(hours=1)

    stores = [Store(postgres_url, heartbeat=BEAT, cluster=True, clock=c)
              for c in (SystemClock(), Ahead())]  # fmt: skip
    try:
        for store in stores:
            await store.open()
            await store.claim()
        on_time, ahead = stores
        assert await on_time.beat()
        # By its own clock, the other's heartbeat is an hour old; by the database's, fresh.
        assert await ahead.reap() == []
        claim = await ahead.claim_dial(
            attempt_id="a1", strategy="list", record_id="r1", number=1, phone=A,
            at=ahead.clock.now(), limits=OPEN,
        )  # fmt: skip
        assert isinstance(claim, Claimed)
        assert abs(claim.at - datetime.now(UTC)) < timedelta(minutes=1)
        [(beat,)] = await fetch(postgres_url, "SELECT max(heartbeat_at) FROM instances")
        assert abs(beat - datetime.now(UTC)) < timedelta(minutes=1)
    finally:
        for store in stores:
            await store.aclose()


async def test_a_callback_of_one_daemon_holds_back_the_next_of_its_record_at_another(
    daemons: tuple[Daemon, Daemon, ManualClock],
) -> None:
    one, two, clock = daemons
    record = Record(id="r1", phone="12")
    first = ob.Callback("list", "on_skipped", record, ("invalid_phone",))
    second = ob.Callback("list", "on_failed", record, ("later",))
    skip = Skipped("list", "r1", "12", RecordState.SKIPPED, "invalid_phone", 0, first)
    await one.store.skipped([skip], at=clock.now())  # one's row, then two's, of one record
    await two.store.skipped(
        [Skipped("list", "r1", "12", RecordState.SKIPPED, "invalid_phone", 0, second)],
        at=clock.now(),
    )
    assert await ob.due(two.store.engine, clock.now(), owner=two.store.owner) == []
    assert await ob.next_due(two.store.engine, owner=two.store.owner) is None
    [row] = await ob.due(one.store.engine, clock.now(), owner=one.store.owner)
    assert row.callback == first
    await one.store.delivered([row.id], clock.now())
    [row] = await ob.due(two.store.engine, clock.now(), owner=two.store.owner)
    assert row.callback == second


class Recording(Store):
    """A daemon's store that counts its claims, notes when it beats, and (``lag``) gets the
    answer of each claim that long after its commit, on the manual clock (a slow network,
    a loaded machine)."""

    def __init__(self, url: str, *, lag: float = 0.0, **options: Any) -> None:
        super().__init__(url, cluster=True, **options)
        self.lag = lag
        self.claims = 0
        self.beats: list[float] = []

    async def claim_dial(self, **intent: Any) -> Any:
        self.claims += 1
        claim = await super().claim_dial(**intent)
        if self.lag:
            assert isinstance(self.clock, ManualClock)
            self.clock.advance(self.lag)
        return claim

    async def beat(self) -> bool:
        self.beats.append(time.monotonic())
        return await super().beat()


def cluster_hub(store: Store, agent: ScriptedAgent, source: ListStrategy, **options: Any) -> Any:
    return DispatchHub(agent=agent, strategies=[source], store=store, clock=store.clock, **options)


async def test_a_dial_that_goes_out_late_after_its_claim_is_stamped_again_first(
    postgres_url: str,
) -> None:
    clock = ManualClock()
    # The answer comes back 0.6 s after the commit: over half of the 1 s margin of a
    # 60 s window, so the start the others count would be too early for the dial.
    store = Recording(postgres_url, lag=0.6, clock=clock, heartbeat=QUIET_HEARTBEAT)
    dialed: list[datetime] = []
    agent = ScriptedAgent(on_dial=lambda _: dialed.append(clock.now()))
    hub = cluster_hub(store, agent, ListStrategy([rec("r1", A)]),
                      pacing=Pacing(max_calls_per_minute=1, window=60.0))  # fmt: skip
    with anyio.fail_after(10):
        async with hub:
            await agent.wait_for_dials(1)
    [(stamped,)] = await fetch(postgres_url, "SELECT dialed_at FROM attempts")
    assert dialed == [stamped]


async def test_a_daemons_claims_go_one_at_a_time_and_wait_for_the_shared_limits(
    postgres_url: str,
) -> None:
    clock = ManualClock()
    store = Recording(postgres_url, clock=clock, heartbeat=QUIET_HEARTBEAT)
    agent = ScriptedAgent()
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(3)])
    pacing = Pacing(max_calls_per_minute=1, window=60.0, max_concurrent=3)
    with anyio.fail_after(10):
        async with cluster_hub(store, agent, source, pacing=pacing):
            await agent.wait_for_dials(1)
            await clock.wait_for_deadline(61.0)  # the window, and the margin: 1 s
            await clock.wait_all_tasks_blocked()
            # r2 learned that the window is full; r3 did not ask the database as well.
            assert (len(agent.dials), store.claims) == (1, 2)
            clock.advance(61.0)
            await agent.wait_for_dials(2)


async def test_no_dial_goes_out_while_a_frozen_daemon_holds_the_lock_and_beats_go_on(
    postgres_url: str,
) -> None:
    store = Recording(postgres_url, heartbeat=Heartbeat(interval=0.2, timeout=5.0))
    dialed: list[tuple[float, list[tuple[Any, ...]]]] = []

    async def on_dial(request: DialRequest) -> None:
        committed = await fetch(
            postgres_url, f"SELECT state FROM attempts WHERE id = '{request.dispatch_id}'"
        )
        dialed.append((time.monotonic(), committed))

    agent = ScriptedAgent(on_dial=on_dial)
    source = ListStrategy()
    with anyio.fail_after(15):
        async with cluster_hub(store, agent, source, poll_interval=0.1):
            frozen = await store.engine.connect()
            await frozen.begin()
            await cluster.lock(frozen)
            held_at = time.monotonic()
            source.records = [rec("r1", A), rec("r2", B)]
            source.poll_now()
            await agent.wait_for_dials(2)
            with contextlib.suppress(DBAPIError):  # closed by the database already
                await frozen.close()
    assert [committed for _, committed in dialed] == [[("dialing",)], [("dialing",)]]
    assert min(at for at, _ in dialed) >= held_at + cluster.HOLD_LIMIT - 0.05
    during = [at for at in store.beats if held_at <= at <= dialed[0][0]]
    assert max(b - a for a, b in itertools.pairwise([held_at, *during])) < 0.7


async def test_records_another_daemon_claimed_are_learned_from_the_ledger_not_claimed(
    daemons: tuple[Daemon, Daemon, ManualClock], postgres_url: str
) -> None:
    one, _, clock = daemons
    store = Recording(postgres_url, clock=clock, heartbeat=QUIET_HEARTBEAT)
    agent = ScriptedAgent()
    source = ListStrategy()
    with anyio.fail_after(10):
        async with cluster_hub(store, agent, source, pacing=Pacing(max_concurrent=3)):
            for n in range(2):  # one claims r0 and r1 while this daemon runs
                assert isinstance(await one.claim(f"r{n}", PHONES[n]), Claimed)
            source.records = [rec(f"r{n}", PHONES[n]) for n in range(3)]
            source.poll_now()
            await agent.wait_for_dials(1)
            await clock.wait_all_tasks_blocked()
    assert [d.to for d in agent.dials] == [PHONES[2]]
    assert store.claims == 1  # r0 and r1 were read to be taken, with r2's claim


async def test_a_daemon_starting_while_the_lock_is_held_leaves_recovery_to_a_later_beat(
    postgres_url: str,
) -> None:
    class FrozenAfterJoining(Recording):
        """Right after this daemon joins, another one freezes holding the lock."""

        frozen: Any = None

        async def claim(self) -> list[Any]:
            joined = await super().claim()
            self.frozen = await self.engine.connect()
            await self.frozen.begin()
            await cluster.lock(self.frozen)
            return joined

    store = FrozenAfterJoining(postgres_url, heartbeat=Heartbeat(interval=0.2, timeout=5.0))
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    try:
        with anyio.fail_after(15):
            async with cluster_hub(store, agent, source, poll_interval=0.1):
                await agent.wait_for_dials(1)  # once the frozen one is cut off
    finally:
        with contextlib.suppress(DBAPIError):
            await store.frozen.close()


class LosesFirstAnswer(Recording):
    """A claim committed whose answer the connection lost (the first one)."""

    async def claim_dial(self, **intent: Any) -> Any:
        claim = await super().claim_dial(**intent)
        if self.claims == 1:
            raise StoreUnavailable("connection reset after the commit")
        return claim


async def test_a_claim_whose_answer_was_lost_is_not_taken_for_another_daemons(
    postgres_url: str,
) -> None:
    # The ledger shows the record claimed: by this daemon, which must not read that as lost
    # to another (the claim, made again with its attempt id, finds it is its own).
    clock = ManualClock()
    store = LosesFirstAnswer(postgres_url, clock=clock, heartbeat=QUIET_HEARTBEAT)
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    hub = cluster_hub(store, agent, source, pacing=Pacing(max_calls_per_minute=50))
    with anyio.fail_after(10):
        async with hub:
            await agent.wait_for_dials(1)
            await source.wait_for_events(2)
    assert store.claims == 2
    assert await fetch(postgres_url, "SELECT number, state FROM attempts") == [(1, "completed")]


class SlowRestamps(Recording):
    """Every answer to a re-stamp comes ``lag`` after it is asked, on the manual clock."""

    restamps = 0

    async def restamp_claim(self, attempt_id: str, limits: Any) -> Any:
        self.restamps += 1
        claim = await super().restamp_claim(attempt_id, limits)
        assert isinstance(self.clock, ManualClock)
        self.clock.advance(self.lag)
        return claim


async def test_a_store_slower_than_half_the_margin_is_stamped_again_a_few_times_then_dialed(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A 5 s window has a 0.25 s margin; answers taking 0.3 s never land inside half of it.
    clock = ManualClock()
    store = SlowRestamps(postgres_url, lag=0.3, clock=clock, heartbeat=QUIET_HEARTBEAT)
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    hub = cluster_hub(store, agent, source, pacing=Pacing(max_calls_per_minute=50, window=5.0))
    with anyio.fail_after(10):
        async with hub:
            await agent.wait_for_dials(1)
    assert store.restamps == 3
    assert "dial.late_start record=r1 late=" in caplog.text
