"""The hub: polls strategies and moves each record through admission, pacing and dialing.

It orchestrates; the rest lives elsewhere: the intake decision in :mod:`dispatch.intake`
(admission rules in :mod:`dispatch.admission`), the queue in :mod:`dispatch.queue`, pacing in
:mod:`dispatch.pacing`, one attempt from intent to outcome in :mod:`dispatch.attempts`,
persistence in :mod:`dispatch.store`, callbacks in :mod:`dispatch.outbox`.
"""

from __future__ import annotations

import enum
import logging
import math
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.lowlevel
from aiolimiter import AsyncLimiter
from anyio.abc import TaskGroup

from ._gc import GcPause, young_threshold_raised
from .abc import Agent, AgentContext, PollItem, Strategy, StrategyContext
from .admission import Admission
from .attempts import START_MARGIN, Attempts, Counters, claim_margin
from .clock import Clock, SystemClock, in_loop, wait_for
from .errors import DispatchError, StoreError, StoreInUse, StoreUnavailable
from .histogram import HistogramStatistics
from .intake import Admit, Done, Ignore, Refuse, Wait, Withdraw, decide
from .options import Backoff, Pacing, RecoverMode, RetryPolicy
from .outbox import CONCURRENCY as CALLBACK_CONCURRENCY
from .outbox import Outbox
from .pacing import Reservation, SlidingWindowLimiter, Slots
from .queue import DispatchQueue, Source
from .record import Record
from .rules.caps import Caps, CapTracker, DialStart
from .rules.dnc import DoNotCallList
from .rules.gate import CallingRules, Gate, Go, Hold
from .rules.gate import Refuse as GateRefuse
from .rules.schedule import Schedule
from .states import RecordState
from .store import KnownRecord, Skipped, Store, controls
from .store.cluster import ClusterBusy, ClusterLimits
from .store.outbox import Callback
from .webhooks import WebhookEndpoint, Webhooks, routes
from .workers import Workers

__all__ = ["KEEP", "DispatchHub", "HubStatistics", "Keep", "StrategyStatistics"]

logger = logging.getLogger(__name__)

# How long a stopping hub still waits, beyond the drain timeout, for an unreachable store to
# take the outcomes it holds.
STORE_GRACE = 10.0
# Intake yields to the event loop this often (seconds), so a huge poll never stalls dialing.
INTAKE_SLICE = 0.005
_RETRY = RecordState.RETRY.value
SKIP_BATCH = 500  # skips committed per transaction
SKIP_LOG_LIMIT = 100  # skips logged one by one per poll; the rest are summed up


class Keep(enum.Enum):
    """The type of :data:`KEEP`: "leave this setting as it is" where None means something."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """A snapshot of the hub's counters since it started."""

    pending: int
    waiting: int  # retries and not-yet-due records
    active: int
    dialed: int
    completed: int
    failed: int
    skipped: int
    already_handled: int  # records in the latest polls that an earlier run had finished
    rate_limited: int = 0  # dials taken from the queue, waiting for the rate limit
    held_numbers: int = 0  # numbers not dialed for now: a call to them may still be live
    do_not_call: int = 0  # numbers on the do-not-call list, as last read from the store
    paused: frozenset[str] = frozenset()  # strategies `dispatch pause` holds, as last read
    # Attempts ended, by final state ("completed", "rejected" ...) and reason ("hangup",
    # "busy" ...); skipped records by reason. Copies: the hub's own counters go on.
    ended: dict[str, dict[str, int]] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Ledger:
    """What a reconfiguration read from the ledger (see DispatchHub._read_ledger)."""

    horizon: float
    history: list[DialStart] | None
    starts: list[datetime] | None
    rejections: dict[tuple[str, str], list[str | None]] | None


@dataclass(frozen=True, slots=True)
class StrategyStatistics:
    """One strategy's share of :class:`HubStatistics`, this run."""

    pending: int
    waiting: int
    active: int
    dialed: int
    done: int  # records that reached a terminal state (completed, failed, skipped ...)
    paused: bool = False
    waiting_for: dict[str, int] = field(default_factory=dict)  # waiting, by what for
    poll_failures: int = 0  # polls that raised (this version of the strategy)
    poll_seconds: HistogramStatistics | None = None  # each good poll, its intake included


class DispatchHub:
    """Dial the records of one or more strategies through one agent.

    Options come as objects (``pacing=Pacing(...)``, ``retry=RetryPolicy(...)``) or, for parity
    with ``@pinecall/dispatch``, as the flat keywords ``max_calls_per_minute``,
    ``max_concurrent``, ``retry_attempts`` and ``retry_delay``. ``store`` is a SQLAlchemy URL or
    a :class:`~dispatch.store.Store`.

    Run it with ``await hub.run()`` (until :meth:`stop` or cancellation), or as an async context
    manager that runs it in the background. With ``exit_when_done=True`` it stops by itself once
    every polled record has reached a terminal state.

    ``recover`` says what becomes of the attempts a dead daemon left in flight
    (``"interrupt"``: never dialed again; ``"retry"``: dialed again within the attempt cap);
    either way their numbers, which may still be in a call, are not dialed for
    ``recover_hold`` seconds.
    """

    def __init__(
        self,
        *,
        agent: Agent,
        strategies: Sequence[Strategy],
        from_: str | None = None,
        store: str | Store = "sqlite:///dispatch.db",
        pacing: Pacing | None = None,
        retry: RetryPolicy | None = None,
        max_calls_per_minute: int | None = None,
        max_concurrent: int | None = None,
        retry_attempts: int | None = None,
        retry_delay: float | None = None,
        poll_interval: float = 5.0,
        drain_timeout: float = 30.0,
        default_region: str | None = None,
        recover: RecoverMode = "interrupt",
        recover_hold: float = 600.0,
        exit_when_done: bool = False,
        callback_timeout: float = 30.0,
        callback_backoff: Backoff | None = None,
        callback_concurrency: int = CALLBACK_CONCURRENCY,
        caps: Caps | None = None,
        webhooks: Sequence[WebhookEndpoint] = (),
        clock: Clock | None = None,
    ) -> None:
        _check(strategies, poll_interval)
        if recover_hold < 0:
            raise ValueError("recover_hold cannot be negative")
        self.agent = agent
        self.from_ = from_
        self.pacing = _merge_pacing(pacing, max_calls_per_minute, max_concurrent)
        self.retry = _merge_retry(retry, retry_attempts, retry_delay)
        self.poll_interval = poll_interval
        self.drain_timeout = drain_timeout
        self.recover = recover
        self.recover_hold = recover_hold
        self.exit_when_done = exit_when_done
        self.clock = clock or SystemClock()
        self.store = store if isinstance(store, Store) else Store(store, clock=self.clock)
        self.admission = Admission(default_region=default_region, clock=self.clock)
        self._sources = [Source(s) for s in strategies]
        self._queue = DispatchQueue(self._sources, self.clock)
        # In a cluster the window is the database's (each claim counts every daemon's
        # starts): a limiter of this process's own would only delay dials it lets through.
        self._limiter = (
            SlidingWindowLimiter(
                self.pacing.max_calls_per_minute, self.pacing.window, clock=self.clock
            )
            if self.pacing.max_calls_per_minute and not self.store.cluster
            else None
        )
        self.webhooks = list(webhooks)
        self._webhooks = Webhooks(self.webhooks, self.clock) if self.webhooks else None
        if self.webhooks:
            self.store.route_webhooks(routes(self.webhooks))
        self._outbox = Outbox(
            self.store,
            {s.name: s for s in strategies},
            clock=self.clock,
            timeout=callback_timeout,
            backoff=callback_backoff,
            concurrency=callback_concurrency,
            webhooks=self._webhooks,
        )
        self.store.listening = self._outbox.listens  # no rows for callbacks nobody listens to
        self.store.on_callbacks = self._outbox.wake  # committed callbacks are delivered now
        self._counters = Counters()
        self.caps = caps or Caps()
        # When the DNC list and the pause flags were last read (monotonic).
        self._controls_read = -math.inf
        self._dnc_stale = False  # the last read of the list failed
        # `dispatch pause` flags (strategy or "*" -> flag), as last read from the store.
        self._pauses: dict[str, controls.Pause] = {}
        self._pauses_stale = False  # the last read failed
        self._cap_tracker = CapTracker()
        self._dnc = DoNotCallList()
        self._gate = Gate(self._dnc, self._cap_tracker)
        self._rules = {s.name: self._calling_rules(s) for s in strategies}
        horizons = [r.caps.horizon for r in self._rules.values()]
        self._cap_tracker.horizon = max(horizons, default=0.0)
        self._smoother = _smoother(self.pacing)
        self._slots = Slots(self.pacing.max_concurrent)
        self._control: TaskGroup | None = None  # the poll loops' task group, while serving
        self._reconfiguring = anyio.Lock()
        self._attempts = Attempts(
            store=self.store,
            agent=agent,
            clock=self.clock,
            queue=self._queue,
            counters=self._counters,
            retry=self.retry,
            from_=from_,
            poll_interval=poll_interval,
            limiter=self._limiter,
            hold=recover_hold,
            caps=self._cap_tracker,
            dnc=self._dnc,
            opt_out_reasons={name: r.opt_out_reasons for name, r in self._rules.items()},
            cluster=self._cluster_limits if self.store.cluster else None,
        )
        if self.store.cluster:
            self._queue.prefer = self._in_my_share
        self._stopping: anyio.Event | None = None
        self._stop_requested = False
        self._stop_deadline = math.inf  # the event loop's time by which a stop is over
        self._stop_in_loop: Callable[[], None] | None = None
        self._running = False
        self._background: AsyncExitStack | None = None
        # Strategies a reload removed or replaced, closed with the hub (their callbacks for
        # calls still in flight are delivered to the strategy now named so, if any).
        self._retired: list[Strategy] = []
        self._retired_webhooks: list[Webhooks] = []

    def _calling_rules(self, strategy: Strategy, caps: Caps | None = None) -> CallingRules:
        """The strategy's calling rules, with the hub's caps tightened by its pack's and its
        own."""
        rules = strategy.calling_rules or CallingRules()
        caps = caps or self.caps
        if rules.pack is not None:
            caps = caps.tightened(rules.pack.caps)
        return CallingRules(
            rules.pack, caps.tightened(rules.caps), rules.schedule, rules.opt_out_reasons
        )

    def _cluster_limits(self, source: Source) -> ClusterLimits:
        """What every daemon of a cluster respects together, for a record of ``source``."""
        return ClusterLimits(
            max_concurrent=self.pacing.max_concurrent,
            max_calls_per_minute=self.pacing.max_calls_per_minute,
            window=self.pacing.window,
            hold=self.recover_hold,
            caps=self._rules[source.name].caps,
            margin=claim_margin(self.pacing.window),
        )

    def _in_my_share(self, record_id: str) -> bool:
        """In a cluster: whether ``record_id`` is of this daemon's share of the records, as
        the live daemons were last seen (the same split in every daemon: a hash of the id
        over their sorted ids)."""
        peers = self.store.peers
        if len(peers) < 2:
            return True
        return peers[zlib.crc32(record_id.encode()) % len(peers)] == self.store.owner

    def calling_rules(self, strategy: str) -> CallingRules:
        """The calling rules that apply to the records of the strategy named ``strategy``."""
        return self._rules[strategy]

    # -- public control ----------------------------------------------------------------------

    @property
    def strategies(self) -> list[Strategy]:
        return [source.strategy for source in self._sources]

    def stop(self) -> None:
        """Stop dialing; calls in flight are awaited up to ``drain_timeout``. Safe to call
        from callbacks (sync ones run in a worker thread), signal handlers and other threads,
        and more than once."""
        if self._stop_in_loop is not None:
            self._stop_in_loop()
        else:
            self._stop_now()

    def _stop_now(self) -> None:
        self._stop_requested = True
        if self._stopping is not None:
            self._stopping.set()
        self._queue.notify()

    def statistics(self) -> HubStatistics:
        c = self._counters
        return HubStatistics(
            pending=self._queue.pending,
            waiting=self._queue.waiting,
            active=self._queue.in_flight,
            dialed=c.dialed,
            completed=c.completed,
            failed=c.failed,
            skipped=c.skipped,
            already_handled=sum(s.handled_in_last_poll for s in self._sources),
            rate_limited=self._limiter.statistics().waiting if self._limiter else 0,
            held_numbers=self._queue.held,
            do_not_call=len(self._dnc),
            paused=frozenset(
                s.name for s in self._sources if controls.is_paused(self._pauses, s.name)
            ),
            ended={str(state): dict(by) for state, by in c.ended.items()},
            skips={str(reason): count for reason, count in c.skips.items()},
        )

    def strategy_statistics(self) -> dict[str, StrategyStatistics]:
        """Per strategy (in their order), what is queued, in a call and done this run."""
        return {
            s.name: StrategyStatistics(
                pending=len(s.pending),
                waiting=len(s.waiting),
                active=len(s.in_flight),
                dialed=s.dialed,
                done=s.done,
                paused=controls.is_paused(self._pauses, s.name) is not None,
                waiting_for=s.waiting_reasons(),
                poll_failures=s.poll_failures,
                poll_seconds=s.poll_seconds.statistics(),
            )
            for s in self._sources
        }

    async def __aenter__(self) -> Self:
        # Built on an exit stack and kept only once the hub runs: if it cannot start (the
        # store is in use, say), the task group is left again before the error propagates.
        try:
            async with AsyncExitStack() as stack:
                background = await stack.enter_async_context(anyio.create_task_group())
                await background.start(self._run_started)
                self._background = stack.pop_all()
        except BaseExceptionGroup as group:
            # The hub failed to start with one error of its own: raise it as `run()` would.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], DispatchError):
                raise group.exceptions[0] from None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.stop()
        assert self._background is not None
        background, self._background = self._background, None
        return await background.__aexit__(exc_type, exc, tb)

    async def _run_started(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await self.run(task_status=task_status)

    # -- reconfiguration (SIGHUP) -------------------------------------------------------------

    async def reconfigure(
        self,
        *,
        strategies: Sequence[Strategy] | None = None,
        pacing: Pacing | None = None,
        retry: RetryPolicy | None = None,
        caps: Caps | None = None,
        webhooks: Sequence[WebhookEndpoint] | None = None,
        poll_interval: float | None = None,
        drain_timeout: float | None = None,
        from_: str | Keep | None = KEEP,
        default_region: str | Keep | None = KEEP,
    ) -> list[str]:
        """Change a running hub's configuration without dropping a call in flight; return
        what changed, one phrase each (``"pacing"``, ``"strategy added: b"`` ...). An
        argument left out keeps its current value.

        ``strategies`` is the whole new list. A strategy object the hub already runs is kept
        as it is. A new object under a name the hub knows replaces that strategy: its queued
        records are released and taken in again by the new one's first poll, at once. A new
        name is loaded from the store, opened and polled. A name left out is removed: it is
        not polled again, its queued records are released, and its calls in flight end
        normally, their callbacks delivered to it. Replaced and removed strategies are
        closed with the hub.

        Nothing is changed if the arguments are invalid (:class:`ValueError`), the store
        cannot be read (:class:`~dispatch.errors.StoreError`) or a new strategy fails to open
        (its error); the error is raised.
        """
        async with self._reconfiguring:
            if self._control is None:
                raise DispatchError("reconfigure() needs a running hub")
            wanted = list(strategies) if strategies is not None else self.strategies
            _check(wanted, self.poll_interval if poll_interval is None else poll_interval)
            pacing, retry, caps = pacing or self.pacing, retry or self.retry, caps or self.caps
            hooks = None if webhooks is None or list(webhooks) == self.webhooks else list(webhooks)
            # Built now: it refuses what it cannot take (two endpoints of one name).
            hub_hooks = Webhooks(hooks, self.clock) if hooks else None
            # Retired sources are kept for the run: a name that comes back finds what this
            # run knows of its records (an outcome the store has not taken yet, say).
            by_name = {source.name: source for source in self._queue.sources}
            current = {source.name: source for source in self._sources}
            names = {strategy.name for strategy in wanted}
            removed = [source for name, source in current.items() if name not in names]
            new = [s for s in wanted if by_name.get(s.name) is None or by_name[s.name].strategy
                   is not s or by_name[s.name].retired]  # fmt: skip
            # Everything that may fail first, so a failure changes nothing.
            known = {s.name: (await self.store.known_by_strategy(s.name)).get(s.name, {})
                     for s in new if s.name not in by_name}  # fmt: skip
            sources = {s.name: by_name.get(s.name) or Source(s) for s in new}
            fresh = [s for s in new if sources[s.name].strategy is not s or s.name in known]
            await self._open_all([(sources[s.name], s) for s in fresh])
            try:
                if self._control is None:
                    raise DispatchError("the hub is stopping")
                rules = {s.name: self._calling_rules(s, caps) for s in wanted}
                ledger = await self._read_ledger(rules, pacing, retry)
            except BaseException:
                await self._close_all(fresh)
                raise
            # Then apply it all; nothing below raises. The strategies that go or change stop
            # taking records in first, at once (a higher cap must not dial their queue);
            # pacing and caps next, with no wait since the ledger was read, so no dial falls
            # between the read and its use.
            stopping = [*removed, *(by_name[s.name] for s in new if s.name in current)]
            for source in stopping:
                self._halt(source)
            changes: list[str] = []
            if caps != self.caps or any(r != self._rules.get(n, r) for n, r in rules.items()):
                changes.append("calling rules")
            self.caps = caps
            self._rules.update(rules)
            self._attempts.opt_out_reasons.update(
                {name: r.opt_out_reasons for name, r in rules.items()}
            )
            self._cap_tracker.horizon = ledger.horizon
            if ledger.history is not None:
                self._cap_tracker.load(ledger.history)  # merged: what is known stays
            changes += self._repace(pacing, ledger.starts)
            if retry != self.retry:
                changes.append("retry")
                self.retry = self._attempts.retry = retry
                if ledger.rejections is not None:
                    self._attempts.rejections.update(ledger.rejections)
            if hooks is not None:
                changes.append("webhooks")
                self._rehook(hooks, hub_hooks)
            changes += self._retune(poll_interval, drain_timeout, from_, default_region)
            for source in stopping:
                await self._halted(source)
            changes[:0] = [f"strategy removed: {source.name}" for source in removed]
            changes[len(removed) : len(removed)] = self._swap(new, sources, known, current)
            for source in removed:
                source.retired = True
                self._retired.append(source.strategy)
            self._sources = [by_name.get(s.name) or sources[s.name] for s in wanted]
            self._queue.sources = [*self._sources, *(s for s in by_name.values() if s.retired
                                                     and s.name not in names)]  # fmt: skip
            for strategy in new:
                self._start_source(sources[strategy.name])
            for source in removed:
                await self._record_queue(source)
            self._queue.notify()
            return changes

    def _swap(
        self,
        new: list[Strategy],
        sources: dict[str, Source],
        known: dict[str, dict[str, KnownRecord]],
        current: dict[str, Source],
    ) -> list[str]:
        """Put each new strategy in its source (a new one, or the one its name had)."""
        changes = []
        for strategy in new:
            source = sources[strategy.name]
            if strategy.name in known:
                changes.append(f"strategy added: {strategy.name}")
                source.known = known[strategy.name]
                source.terminal_at_start = _terminal(source.known)
            else:
                verb = "changed" if strategy.name in current else "added"
                changes.append(f"strategy {verb}: {strategy.name}")
                if source.strategy is not strategy:
                    self._retired.append(source.strategy)
                elif strategy in self._retired:  # the very strategy a reload removed, back
                    self._retired.remove(strategy)
                source.strategy, source.retired = strategy, False
            self._outbox.strategies[strategy.name] = strategy
        return changes

    async def _read_ledger(
        self, rules: dict[str, CallingRules], pacing: Pacing, retry: RetryPolicy
    ) -> _Ledger:
        """What new rules need from the ledger that the hub does not hold yet."""
        now = self.clock.now()
        horizon = max((r.caps.horizon for r in rules.values()), default=0.0)
        history = None
        if horizon > self._cap_tracker.horizon:
            history = await self.store.dial_history(now - timedelta(seconds=horizon))
        starts = None
        limiter = self._limiter
        limited = pacing.max_calls_per_minute and not self.store.cluster
        if limited and (limiter is None or pacing.window > limiter.window):
            # Off until now (its starts since are in the ledger only), or a longer window
            # than it kept starts for: the older ones come from the ledger.
            starts = await self.store.dial_starts(now - timedelta(seconds=pacing.window))
            if limiter is not None:
                starts = [t for t in starts if t <= now - timedelta(seconds=limiter.window)]
        rejections = None
        if retry.by_reason and not self.retry.by_reason:
            rejections = await self.store.rejections()
        return _Ledger(horizon, history, starts, rejections)

    async def _open_all(self, pairs: list[tuple[Source, Strategy]]) -> None:
        """Open each strategy (for its source); if one fails, close those opened and raise."""
        opened: list[Strategy] = []
        try:
            for source, strategy in pairs:
                await strategy.open(StrategyContext(poll_now=in_loop(source.request_poll)))
                opened.append(strategy)
        except BaseException:
            await self._close_all(opened)
            raise

    @staticmethod
    async def _close_all(strategies: Iterable[Strategy]) -> None:
        with anyio.CancelScope(shield=True):
            for strategy in strategies:
                try:
                    await strategy.aclose()
                except Exception:
                    logger.exception("strategy.close_failed strategy=%s", strategy.name)

    def _halt(self, source: Source) -> None:
        """Stop polling ``source`` and release what it has queued (not its calls)."""
        source.generation += 1  # a record the dispatch loop holds from before is let go
        if source.scope is not None:
            source.scope.cancel()  # and a poll under way adds nothing more (`_enqueue`)
        for record_id in source.queued_ids():
            self._queue.withdraw(source, record_id)

    async def _halted(self, source: Source) -> None:
        """Wait until the poll loop :meth:`_halt` cancelled is over."""
        if source.stopped is not None:
            await source.stopped.wait()

    def _repace(self, pacing: Pacing, starts: list[datetime] | None) -> list[str]:
        """Apply new pacing: the window limit keeps the starts it counted (or is seeded
        again from the ledger's if it was off), the concurrency cap changes in place."""
        if pacing == self.pacing:
            return []
        self.pacing = pacing
        self._slots.resize(pacing.max_concurrent)
        self._smoother = _smoother(pacing)
        limiter = self._attempts.limiter  # what reservations in flight were taken from
        if pacing.max_calls_per_minute is None or self.store.cluster:
            if limiter is not None:
                limiter.reconfigure(sys.maxsize, limiter.window)  # wake the waiter: no limit
            self._limiter = None
            return ["pacing"]
        was_off = self._limiter is None
        if limiter is None:
            limiter = SlidingWindowLimiter(1, pacing.window, clock=self.clock)
        limiter.reconfigure(pacing.max_calls_per_minute, pacing.window)
        if starts is not None:
            mono, now = self.clock.monotonic(), self.clock.now()
            seeded = [mono - (now - t).total_seconds() + START_MARGIN for t in starts]
            if was_off:  # its starts since were not counted: the ledger's are all there is
                limiter.reseed(seeded)
            else:  # a longer window: the starts older than the one it kept
                limiter.seed(seeded)
        self._limiter = self._attempts.limiter = limiter
        return ["pacing"]

    def _rehook(self, webhooks: list[WebhookEndpoint], built: Webhooks | None) -> None:
        if self._webhooks is not None:
            self._retired_webhooks.append(self._webhooks)  # it may be sending: closed later
        self.webhooks = webhooks
        self._webhooks = built
        self.store.route_webhooks(routes(webhooks))
        self._outbox.webhooks = self._webhooks

    def _retune(
        self,
        poll_interval: float | None,
        drain_timeout: float | None,
        from_: str | Keep | None,
        default_region: str | Keep | None,
    ) -> list[str]:
        changes = []
        if poll_interval is not None and poll_interval != self.poll_interval:
            changes.append("poll_interval")
            self.poll_interval = self._attempts.poll_interval = poll_interval
        if drain_timeout is not None and drain_timeout != self.drain_timeout:
            changes.append("drain_timeout")
            self.drain_timeout = drain_timeout
        if not isinstance(from_, Keep) and from_ != self.from_:
            changes.append("from")
            self.from_ = self._attempts.from_ = from_
        if not isinstance(default_region, Keep) and default_region != self.admission.default_region:
            changes.append("default_region")
            self.admission = Admission(default_region=default_region, clock=self.clock)
        return changes

    # -- the run -----------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`stop` (or, with ``exit_when_done``, until the work is done)."""
        if self._running:
            raise DispatchError("this hub is already running")
        self._running = True
        self._stop_deadline = math.inf
        self._stopping = anyio.Event()
        self._stop_in_loop = in_loop(self._stop_now)
        if self._stop_requested:
            self._stopping.set()
        try:
            with young_threshold_raised():
                await self._run(task_status)
        finally:
            self._running = False
            self._stop_in_loop = None
        self._log_summary()

    async def _run(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await self._open()
            async with anyio.create_task_group() as outer:
                await outer.start(self._run_store)
                agent_done = anyio.Event()
                beating = anyio.CancelScope()
                try:
                    outer.start_soon(self._heartbeat, beating)
                    await outer.start(self._run_agent, agent_done)
                    self._log_ready()
                    async with anyio.create_task_group() as delivery:
                        await delivery.start(self._outbox.run)
                        task_status.started()
                        try:
                            await self._serve()
                        finally:
                            # Calls are over: deliver what is due, then stop the worker.
                            self._outbox.finish(self._stop_deadline)
                finally:
                    beating.cancel()
                    agent_done.set()
                    self.store.close()
        finally:
            await self._close()

    async def _run_store(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # Shielded: if the hub is cancelled, calls in flight still record their outcome
        # (interrupted) before the writer stops; it stops when _serve closes the store.
        with anyio.CancelScope(shield=True):
            await self.store.run(task_status=task_status)

    async def _open(self) -> None:
        await self.store.open()
        for dead in await self.store.claim():
            logger.warning(
                "store.took_over from=%s started=%s (its heartbeat expired or its process is gone)",
                dead,
                f"{dead.started_at:%Y-%m-%d %H:%M:%S}",
            )
        now = self.clock.now()
        try:
            recovered = await self.store.recover(self.recover, now, max_dials=self.retry.max_dials)
        except ClusterBusy as exc:
            # Another daemon holds the cluster's lock; until the reaper recovers them at a
            # beat, the claims count orphaned calls as in flight, so nothing is lost waiting.
            logger.warning("cluster.recover_later error=%s (done at the next beat)", exc)
            recovered = 0
        if recovered:
            logger.warning(
                "store.recovered attempts=%d mode=%s hold=%gs (left in flight by a previous "
                "process; their numbers are not dialed during the hold)",
                recovered,
                self.recover,
                self.recover_hold,
            )
        await self._restore_pacing(now)
        await self._load_rules(now)
        known = await self.store.known_by_strategy()
        for source in self._sources:
            source.known = known.get(source.name, {})
            source.terminal_at_start = _terminal(source.known)
        for source in self._sources:
            await source.strategy.open(StrategyContext(poll_now=in_loop(source.request_poll)))

    async def _restore_pacing(self, now: datetime) -> None:
        """Seed the rate limiter with the ledger's recent dial starts, and hold the numbers
        whose calls may still be live, so a restart changes neither."""
        mono = self.clock.monotonic()
        if self._limiter is not None:
            since = now - timedelta(seconds=self._limiter.window)
            starts = await self.store.dial_starts(since)
            self._limiter.seed(mono - (now - t).total_seconds() + START_MARGIN for t in starts)
        await self._hold_maybe_live(now)
        if self._queue.held:
            logger.info(
                "hub.holding numbers=%d (a call to them may still be live)", self._queue.held
            )

    async def _hold_maybe_live(self, now: datetime) -> None:
        """Hold, for ``recover_hold`` after their call ended, the numbers whose call may
        still be live at the platform (a dead daemon's, or of unknown outcome)."""
        if not self.recover_hold:
            return
        mono = self.clock.monotonic()
        since = now - timedelta(seconds=self.recover_hold)
        for phone, ended in (await self.store.maybe_live(since)).items():
            self._queue.hold(phone, mono - (now - ended).total_seconds() + self.recover_hold)

    async def _load_rules(self, now: datetime) -> None:
        """The do-not-call list, each number's recent dials (the caps), and the rejections of
        records waiting to retry (retries by reason), from the ledger."""
        await self._refresh_dnc(force=True)
        if self._cap_tracker.horizon:
            since = now - timedelta(seconds=self._cap_tracker.horizon)
            self._cap_tracker.load(await self.store.dial_history(since))
        if self.retry.by_reason:
            self._attempts.rejections.update(await self.store.rejections())

    async def _refresh_dnc(self, *, force: bool = False) -> None:
        fingerprint = await self.store.do_not_call_fingerprint()
        if force or fingerprint != self._dnc.fingerprint:
            reading = self._dnc.reading()
            listed = await self.store.do_not_call()
            self._dnc.replace({p: e.added_at for p, e in listed.items()}, fingerprint, reading)
            if not force:
                logger.info("dnc.reloaded numbers=%d", len(self._dnc))
        self._dnc.checked_at = self.clock.now()

    async def _maybe_read_controls(self) -> None:
        """Read what other shells change in the store (``dispatch dnc``, ``dispatch pause``)
        at most once per ``poll_interval``: a number added while its record waits, or a
        pause, is seen within one poll interval. Called before each poll and each dial.
        A failed read keeps what was read last, and is said once, not every time."""
        now = self.clock.monotonic()
        if now - self._controls_read < self.poll_interval:
            return
        self._controls_read = now
        try:
            await self._refresh_dnc()
        except StoreError as exc:
            if not self._dnc_stale:
                logger.warning("dnc.refresh_failed error=%s (using the list as last read)", exc)
            self._dnc_stale = True
        else:
            self._dnc_stale = False
        try:
            flags = await controls.paused(self.store.engine)
        except StoreError as exc:
            # An outage neither pauses nor resumes anything.
            if not self._pauses_stale:
                logger.warning("hub.pause_read_failed error=%s (using the flags as last read)",
                               exc)  # fmt: skip
            self._pauses_stale = True
            return
        self._pauses_stale = False
        for name in flags.keys() - self._pauses.keys():
            logger.info("hub.paused strategy=%s reason=%s", name, flags[name].reason or "-")
        for name in self._pauses.keys() - flags.keys():
            logger.info("hub.resumed strategy=%s", name)
        self._pauses = flags

    async def _heartbeat(self, scope: anyio.CancelScope) -> None:
        """Tell the store this daemon is alive; stop the hub if another daemon took over.
        In a cluster, look for dead daemons at the same pace, in a task of its own: a wait
        for the cluster's lock never delays a beat (late beats would get this daemon
        judged dead)."""
        with scope:
            async with anyio.create_task_group() as tg:
                if self.store.cluster:
                    tg.start_soon(self._reaper)
                await self._beat()

    async def _beat(self) -> None:
        interval = self.store.heartbeat_options.interval
        while True:
            await self.clock.sleep_until(self.clock.monotonic() + interval)
            try:
                alive = await self.store.beat()
            except StoreUnavailable:
                continue  # the store logs its outage once; beat again when it is back
            except StoreError as exc:
                logger.error("store.heartbeat_failed error=%s", exc)
                continue
            if not alive:
                raise StoreInUse(
                    "another daemon took the store over (this one's heartbeat had expired)"
                )

    async def _reaper(self) -> None:
        interval = self.store.heartbeat_options.interval
        while True:
            await self.clock.sleep_until(self.clock.monotonic() + interval)
            await self._reap()

    async def _reap(self) -> None:
        """In a cluster, at every beat: remove the daemons whose heartbeat expired, recover
        the attempts in flight that no live daemon owns (only those: theirs), hold their
        numbers, and deliver their callbacks from now on. A recovery that failed is done at
        the next beat: it looks for orphaned attempts, not for daemons just removed."""
        try:
            dead = await self.store.reap()
            now = self.clock.now()
            recovered = await self.store.recover(self.recover, now, max_dials=self.retry.max_dials)
            if recovered:
                await self._hold_maybe_live(now)
        except StoreError as exc:
            logger.warning("cluster.reap_failed error=%s (tried again at the next beat)", exc)
            return
        for instance in dead:
            logger.warning("cluster.instance_lost instance=%s heartbeat=%s", instance,
                           f"{instance.heartbeat_at:%H:%M:%S}")  # fmt: skip
        if recovered:
            logger.warning("cluster.recovered attempts=%d mode=%s (their numbers are held %gs)",
                           recovered, self.recover, self.recover_hold)  # fmt: skip
        if dead or recovered:
            self._outbox.wake()  # their undelivered callbacks are this daemon's now

    def _log_ready(self) -> None:
        logger.info(
            "hub.ready strategies=%s store=%s known_records=%d",
            ",".join(s.name for s in self._sources),
            self.store,
            sum(len(s.known) for s in self._sources),
        )

    async def _run_agent(
        self, done: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Hold the agent open, in a task of its own (an agent may run background tasks from
        ``open()`` to ``aclose()``), until the calls are over."""
        await self.agent.open(AgentContext(report_late=self._attempts.late))
        try:
            task_status.started()
            await done.wait()
        finally:
            try:
                await self.agent.aclose()
            except Exception:
                logger.exception("agent.close_failed")

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            # Each once: a strategy a reload removed may have come back.
            await self._close_all({id(s): s for s in [*self.strategies, *self._retired]}.values())
            # A store that drops packets must not hold the exit: what is left of the stop
            # deadline (at least a second) for saying goodbye to it.
            left = max(1.0, self._stop_deadline - anyio.current_time())
            with anyio.move_on_after(left) as scope:
                try:
                    await self.store.release()
                except StoreError as exc:
                    logger.warning("store.release_failed error=%s", exc)
            if scope.cancelled_caught:
                logger.warning("store.release_failed error=no answer before the stop deadline")
            with anyio.move_on_after(max(1.0, self._stop_deadline - anyio.current_time())):
                await self.store.aclose()
            for webhooks in [self._webhooks, *self._retired_webhooks]:
                if webhooks is not None:
                    await webhooks.aclose()

    async def _serve(self) -> None:
        assert self._stopping is not None
        async with anyio.create_task_group() as calls:
            workers = Workers(calls, self._attempt)
            async with anyio.create_task_group() as control:
                self._control = control
                for source in self._sources:
                    self._start_source(source)
                control.start_soon(self._queue.run_timers)
                control.start_soon(self._dispatch_loop, workers)
                control.start_soon(self._attempts.reconcile_late)
                try:
                    await self._stopping.wait()
                finally:
                    # Stopping (or cancelled): an unreachable store may keep the outcomes of
                    # the calls in flight waiting only so long, or the daemon could never exit.
                    grace = self.drain_timeout + STORE_GRACE
                    self._stop_deadline = anyio.current_time() + grace
                    self.store.stop_retrying(after=grace)
                    self._control = None
                    control.cancel_scope.cancel()
            workers.close()  # nothing more is dialed: each worker ends with its call
            active = self.statistics().active
            if active:
                logger.info("hub.draining active=%d timeout=%.0fs", active, self.drain_timeout)
            # Calls in flight finish on their own; past the drain timeout they are cancelled
            # and recorded as interrupted.
            calls.cancel_scope.deadline = anyio.current_time() + self.drain_timeout
        with anyio.CancelScope(shield=True):
            for source in self._sources:  # what is left undialed, for `dispatch status`
                await self._record_queue(source)

    # -- polling and intake ------------------------------------------------------------------

    def _start_source(self, source: Source) -> None:
        """Poll and watch ``source`` in a scope of its own, which a reload may cancel."""
        if self._control is None:
            return  # stopping: nothing is polled any more
        source.scope, source.stopped = anyio.CancelScope(), anyio.Event()
        source.poll_event = None  # the stopped loop's
        self._control.start_soon(self._run_source, source, source.scope, source.stopped)

    async def _run_source(
        self, source: Source, scope: anyio.CancelScope, stopped: anyio.Event
    ) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._poll_loop, source)
                    tasks.start_soon(self._watch, source)
        finally:
            stopped.set()

    async def _poll_loop(self, source: Source) -> None:
        schedule = self._rules[source.name].schedule
        while True:
            if schedule is not None:
                await self._wait_for_schedule(source, schedule)
            # Polling from here on, with no wait before: a done check in between would find
            # neither the poll asked for nor the poll running.
            source.polling, source.poll_wanted = True, False
            try:
                await self._maybe_read_controls()
                started = self.clock.monotonic()
                result = source.strategy.poll()
                items = result if isinstance(result, AsyncIterator) else await result
                await self._intake(source, items)
            except Exception as exc:
                source.poll_failures += 1
                logger.error(
                    "poll.failed strategy=%s error=%s: %s", source.name, type(exc).__name__, exc
                )
            else:
                # Only a poll that read the whole source counts: after a failed one we do not
                # know what is left, so --exit-when-done must not call the campaign done.
                source.polls += 1
                source.poll_seconds.observe(self.clock.monotonic() - started)
            finally:
                source.polling = False
            await self._record_queue(source)
            self._check_done()
            await self._wait_for_poll(source)

    async def _wait_for_schedule(self, source: Source, schedule: Schedule) -> None:
        """Outside its campaign schedule a strategy is not polled: sleep until it opens (its
        queued records wait at the gate meanwhile)."""
        now = self.clock.now()
        opens = schedule.next_open(now)
        if opens == now:
            return
        if opens is None:
            logger.info("schedule.over strategy=%s (not polled again)", source.name)
            source.polls = max(source.polls, 1)  # nothing more will come from it
            source.poll_wanted = False
            self._check_done()
            await anyio.sleep_forever()
        assert opens is not None
        logger.info("schedule.closed strategy=%s opens=%s", source.name, opens.isoformat())
        deadline = self.clock.monotonic() + (opens - now).total_seconds()
        source.opens_at = opens
        await self._record_queue(source)
        await self.clock.sleep_until(deadline)
        source.opens_at = None

    async def _wait_for_poll(self, source: Source) -> None:
        """Sleep until the next poll is due or the strategy asks for one (``poll_now``)."""
        if not source.poll_wanted:
            source.poll_event = event = anyio.Event()
            await wait_for(event, self.clock.monotonic() + self.poll_interval, self.clock)
            source.poll_event = None

    async def _watch(self, source: Source) -> None:
        try:
            await source.strategy.watch()
        except Exception as exc:
            logger.warning(
                "watch.failed strategy=%s error=%s: %s (polling every %gs instead)",
                source.name,
                type(exc).__name__,
                exc,
                self.poll_interval,
            )

    async def _record_queue(self, source: Source) -> None:
        # For `dispatch status`: records queued in memory have no row in the store yet.
        reasons = source.waiting_reasons()
        if source.opens_at is not None:  # closed by its schedule: say when it opens
            reasons[f"schedule: opens {source.opens_at:%Y-%m-%d %H:%M} UTC"] = 0
        try:
            await self.store.polled(
                source.name,
                pending=len(source.pending),
                waiting=len(source.waiting),
                at=self.clock.now(),
                reasons=reasons,
            )
        except StoreUnavailable:
            pass  # best effort; the store logs its outage once
        except StoreError as exc:
            logger.warning("store.queue_snapshot_failed strategy=%s error=%s", source.name, exc)

    async def _intake(
        self, source: Source, items: AsyncIterator[PollItem] | Iterable[PollItem]
    ) -> None:
        """Act on each item of one poll, as :func:`~dispatch.intake.decide` says.

        Yields to the event loop every few milliseconds, so a poll of any size keeps the
        calls in flight responsive, and commits skips in bounded batches as it goes. The
        cyclic GC is off while the items are processed (a million records would make each
        full collection walk them all, stalling everything) and on while anything waits."""
        with GcPause() as gc_pause:
            await self._take_in(source, items, gc_pause)

    async def _take_in(
        self,
        source: Source,
        items: AsyncIterator[PollItem] | Iterable[PollItem],
        gc_pause: GcPause,
    ) -> None:
        skips: list[tuple[Skipped, KnownRecord | None]] = []
        reported: Counter[str] = Counter()
        handled = 0
        incremental = source.strategy.incremental
        clock = time.perf_counter
        slice_ends = clock() + INTAKE_SLICE
        count = 0
        listed = None if isinstance(items, AsyncIterator) else iter(items)
        while True:
            item: PollItem | None
            if listed is None:
                assert isinstance(items, AsyncIterator)
                with gc_pause.resumed():  # the source may wait for I/O
                    item = await anext(items, None)
            else:
                item = next(listed, None)
            if item is None:
                break
            count += 1
            if count % 32 == 0 and clock() >= slice_ends:
                with gc_pause.resumed():
                    await anyio.lowlevel.checkpoint()
                slice_ends = clock() + INTAKE_SLICE
            record_id = item.id
            queued = source.queued(record_id)
            in_flight = record_id in source.in_flight
            known = source.known.get(record_id)
            verdict = decide(
                item,
                known=known,
                queued=queued,
                in_flight=in_flight,
                incremental=incremental,
                admission=self.admission,
                max_dials=self.retry.max_dials,
            )
            if isinstance(verdict, Ignore):
                continue
            # An incremental source's new version of a queued record replaces it. A pending
            # retry keeps its due time; a record waiting for its own not_before takes the new
            # version's.
            due = self._queue.withdraw(source, record_id) if queued and not in_flight else None
            if known is None or known.status != _RETRY:
                due = None
            if isinstance(verdict, Withdraw):
                logger.info("record.withdrawn strategy=%s record=%s", source.name, record_id)
            elif isinstance(verdict, Done):
                handled += record_id in source.terminal_at_start
            elif isinstance(verdict, Refuse):
                self._refuse(source, verdict, skips, reported)
                if len(skips) >= SKIP_BATCH:
                    with gc_pause.resumed():
                        await self._record_skips(source, skips)
                    skips = []
            else:
                if queued:
                    logger.info("record.updated strategy=%s record=%s", source.name, record_id)
                self._enqueue(source, verdict, due)
        source.handled_in_last_poll = handled
        if skips:
            with gc_pause.resumed():
                await self._record_skips(source, skips)
        hidden = sum(reported.values()) - SKIP_LOG_LIMIT
        if hidden > 0:
            logger.warning(
                "record.skipped strategy=%s more=%d reasons=%s (not logged one by one; "
                "`dispatch status` counts them)",
                source.name,
                hidden,
                ",".join(f"{reason}:{n}" for reason, n in sorted(reported.items())),
            )

    def _enqueue(self, source: Source, verdict: Admit | Wait, due: float | None) -> None:
        if source.scope is not None and source.scope.cancel_called:
            return  # a reload stopped this poll (the strategy goes or changes)
        until = -math.inf if due is None else due
        if isinstance(verdict, Wait):
            wait = (verdict.until - self.clock.now()).total_seconds()
            until = max(until, self.clock.monotonic() + wait)
        if until == -math.inf:
            self._queue.admit(source, verdict.record)
        else:
            self._queue.delay(source, verdict.record, until)

    def _refuse(
        self,
        source: Source,
        verdict: Refuse,
        skips: list[tuple[Skipped, KnownRecord | None]],
        reported: Counter[str],
    ) -> None:
        record, skip = verdict.record, verdict.skip
        reported[skip.reason] += 1
        if sum(reported.values()) <= SKIP_LOG_LIMIT:
            logger.warning(
                "record.skipped strategy=%s record=%s reason=%s detail=%s",
                source.name,
                record.id,
                skip.reason,
                skip.detail,
            )
        known = source.known.get(record.id)
        attempts = known.attempts if known else 0
        phone = record.phone[:32]  # as given: a skipped phone may be anything
        callback = Callback(source.name, "on_skipped", record, (skip.reason.value,))
        skipped = Skipped(
            source.name, record.id, phone, skip.state, skip.reason, attempts, callback
        )
        skips.append((skipped, known))
        # Marked now, so a repeat of the same id in this poll is not skipped twice.
        source.known[record.id] = KnownRecord.of(skip.state, attempts, None, skip.reason, phone)

    async def _record_skips(
        self, source: Source, skips: list[tuple[Skipped, KnownRecord | None]]
    ) -> None:
        try:
            # Shielded: a reload that stops this poll must not lose a batch half-recorded.
            with anyio.CancelScope(shield=True):
                await self.store.skipped([skip for skip, _ in skips], at=self.clock.now())
        except StoreError as exc:
            # Not persisted: back to what was known before (attempts made included), so the
            # next poll decides again.
            for skip, before in skips:
                if before is None:
                    source.known.pop(skip.record_id, None)
                else:
                    source.known[skip.record_id] = before
            logger.error(
                "store.skip_failed strategy=%s records=%d first=%s error=%s",
                source.name,
                len(skips),
                skips[0][0].record_id,
                exc,
            )
            return
        self._counters.skipped += len(skips)
        by_reason = self._counters.skips
        for skip, _ in skips:
            by_reason[skip.reason] = by_reason.get(skip.reason, 0) + 1
        source.done += len(skips)

    # -- dispatching -------------------------------------------------------------------------

    async def _dispatch_loop(self, workers: Workers) -> None:
        slots = self._slots
        while True:
            # No dial while intents cannot be committed: the store logs the outage once.
            await self.store.wait_available()
            await slots.acquire()
            if self._attempts.shared_room_at > self.clock.monotonic():
                # A cluster's shared cap or rate is full: asking again before then is no use.
                await self.clock.sleep_until(self._attempts.shared_room_at)
            source, record = await self._queue.take()
            generation = source.generation
            # Read here too, whether or not a strategy polls (a closed schedule, a slow one).
            await self._maybe_read_controls()
            if source.generation != generation:  # a reload removed or replaced its strategy
                self._let_go(source, record, None, slots)
                continue
            if controls.is_paused(self._pauses, source.name):
                # Paused: no new dial (calls in flight go on). The record waits one poll
                # interval, when the flags may have been read again, and is taken anew.
                until = self.clock.now() + timedelta(seconds=self.poll_interval)
                await self._not_now(source, record, Hold(until, "paused"), slots)
                continue
            verdict = self._gate.check(self._rules[source.name], record, self.clock.now())
            if not isinstance(verdict, Go):
                await self._not_now(source, record, verdict, slots)
                continue
            reservation: Reservation | None = None
            try:
                if self._smoother is not None:
                    await self._smoother.acquire()
                if self._limiter is not None:
                    reservation = await self._limiter.acquire()
            except BaseException:
                self._queue.put_back(source, record)  # not dialed
                slots.release()
                raise
            if source.generation != generation:  # a reload, while this waited for the rate
                self._let_go(source, record, reservation, slots)
                continue
            if reservation is not None or self._smoother is not None:
                # The wait for the rate may have outlasted the window, or a cap: ask again.
                verdict = self._gate.check(self._rules[source.name], record, self.clock.now())
                if not isinstance(verdict, Go):
                    self._attempts.give_back(reservation)
                    await self._not_now(source, record, verdict, slots)
                    continue
            workers.hand(source, record, reservation, slots, verdict.evidence)

    def _let_go(
        self, source: Source, record: Record, reservation: Reservation | None, slots: Slots
    ) -> None:
        """Drop a record taken from a strategy a reload removed or replaced since: not
        dialed. A replaced one's new version takes it in again at its next poll."""
        self._attempts.give_back(reservation)
        self._queue.release(source, record)
        slots.release()
        if not source.retired:
            source.request_poll()

    async def _not_now(
        self, source: Source, record: Record, verdict: Hold | GateRefuse, slots: Slots
    ) -> None:
        """A record the calling rules hold back waits (not an attempt); one they refuse is
        skipped for good. Either way its number and its slot are free again."""
        self._queue.release(source, record)
        slots.release()
        if isinstance(verdict, Hold):
            wait = max(0.0, (verdict.until - self.clock.now()).total_seconds())
            # A paused strategy's records come back here every poll interval: `hub.paused`
            # said it once, and a large campaign would flood the journal at INFO.
            logger.log(
                logging.DEBUG if verdict.why == "paused" else logging.INFO,
                "record.held strategy=%s record=%s why=%s",
                source.name,
                record.id,
                verdict.why,
            )
            self._queue.delay(source, record, self.clock.monotonic() + wait, verdict.why)
            return
        skips: list[tuple[Skipped, KnownRecord | None]] = []
        self._refuse(source, Refuse(record, verdict.skip), skips, Counter())
        await self._record_skips(source, skips)
        self._check_done()

    async def _attempt(
        self,
        source: Source,
        record: Record,
        reservation: Reservation | None,
        slots: Slots,
        evidence: dict[str, Any],
    ) -> None:
        try:
            await self._attempts.run(source, record, reservation, evidence)
        finally:
            self._queue.release(source, record)
            slots.release()
            self._check_done()

    def _check_done(self) -> None:
        if not self.exit_when_done or self._stop_requested:
            return
        # A poll asked for (poll_now, or a reload letting a record go) may bring work.
        busy = any(s.polls == 0 or s.polling or s.poll_wanted for s in self._sources)
        if busy or not self._queue.idle():
            return
        logger.info("hub.done every polled record is in a terminal state")
        self.stop()

    def _log_summary(self) -> None:
        s = self.statistics()
        if s.dialed == 0 and s.skipped == 0:
            logger.info("hub.stopped nobody dialed (%d records already handled)", s.already_handled)
        else:
            logger.info(
                "hub.stopped dialed=%d completed=%d failed=%d skipped=%d already_handled=%d",
                s.dialed,
                s.completed,
                s.failed,
                s.skipped,
                s.already_handled,
            )


async def poll_items(strategy: Strategy) -> AsyncIterator[PollItem]:
    """One poll of ``strategy``, whichever form its ``poll()`` takes (iterable or generator)."""
    result = strategy.poll()
    if isinstance(result, AsyncIterator):
        async for item in result:
            yield item
    else:
        items: Iterable[PollItem] = await result
        for item in items:
            yield item


def _terminal(known: dict[str, KnownRecord]) -> set[str]:
    """The ids of the records that were terminal when the store was read."""
    return {record_id for record_id, k in known.items() if k.terminal}


def _check(strategies: Sequence[Strategy], poll_interval: float) -> None:
    names = [s.name for s in strategies]
    if not names:
        raise ValueError("a hub needs at least one strategy")
    if len(set(names)) != len(names):
        raise ValueError(f"strategy names must be unique, got {names}")
    if poll_interval <= 0:
        raise ValueError("poll_interval must be positive")


def _smoother(pacing: Pacing) -> AsyncLimiter | None:
    if not pacing.max_calls_per_second:
        return None
    return AsyncLimiter(1, 1 / pacing.max_calls_per_second)


def _merge_pacing(
    pacing: Pacing | None, max_calls_per_minute: int | None, max_concurrent: int | None
) -> Pacing:
    if pacing is not None:
        if max_calls_per_minute is not None or max_concurrent is not None:
            raise ValueError("pass pacing=Pacing(...) or the flat keywords, not both")
        return pacing
    return Pacing(max_calls_per_minute=max_calls_per_minute, max_concurrent=max_concurrent or 1)


def _merge_retry(
    retry: RetryPolicy | None, retry_attempts: int | None, retry_delay: float | None
) -> RetryPolicy:
    if retry is not None:
        if retry_attempts is not None or retry_delay is not None:
            raise ValueError("pass retry=RetryPolicy(...) or the flat keywords, not both")
        return retry
    defaults = RetryPolicy()
    return RetryPolicy(
        attempts=defaults.attempts if retry_attempts is None else retry_attempts,
        delay=defaults.delay if retry_delay is None else retry_delay,
    )
