"""The hub: polls strategies and moves each record through admission, pacing and dialing.

It orchestrates; the rest lives elsewhere: admission in :mod:`dispatch.admission`, the queue in
:mod:`dispatch.queue`, pacing in :mod:`dispatch.pacing`, one attempt from intent to outcome in
:mod:`dispatch.attempts`, persistence in :mod:`dispatch.store`, callbacks in
:mod:`dispatch.outbox`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

from .abc import (
    Agent,
    Malformed,
    PollItem,
    Removed,
    Strategy,
)
from .admission import Admission, Defer, Skip
from .attempts import Attempts, Counters
from .clock import Clock, SystemClock
from .errors import DispatchError, StoreError
from .options import Pacing, RecoverMode, RetryPolicy
from .outbox import Backoff, Outbox
from .pacing import SlidingWindowLimiter
from .queue import DispatchQueue, Source
from .record import Record
from .states import SkipReason
from .store import KnownRecord, Store
from .store.outbox import Callback

__all__ = ["DispatchHub", "HubStatistics"]

logger = logging.getLogger(__name__)


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


class DispatchHub:
    """Dial the records of one or more strategies through one agent.

    Options come as objects (``pacing=Pacing(...)``, ``retry=RetryPolicy(...)``) or, for parity
    with ``@pinecall/dispatch``, as the flat keywords ``max_calls_per_minute``,
    ``max_concurrent``, ``retry_attempts`` and ``retry_delay``. ``store`` is a SQLAlchemy URL or
    a :class:`~dispatch.store.Store`.

    Run it with ``await hub.run()`` (until :meth:`stop` or cancellation), or as an async context
    manager that runs it in the background. With ``exit_when_done=True`` it stops by itself once
    every polled record has reached a terminal state.
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
        exit_when_done: bool = False,
        callback_timeout: float = 30.0,
        callback_backoff: Backoff | None = None,
        clock: Clock | None = None,
    ) -> None:
        names = [s.name for s in strategies]
        if not names:
            raise ValueError("a hub needs at least one strategy")
        if len(set(names)) != len(names):
            raise ValueError(f"strategy names must be unique, got {names}")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.agent = agent
        self.from_ = from_
        self.pacing = _merge_pacing(pacing, max_calls_per_minute, max_concurrent)
        self.retry = _merge_retry(retry, retry_attempts, retry_delay)
        self.poll_interval = poll_interval
        self.drain_timeout = drain_timeout
        self.recover = recover
        self.exit_when_done = exit_when_done
        self.clock = clock or SystemClock()
        self.store = store if isinstance(store, Store) else Store(store)
        self.admission = Admission(default_region=default_region, clock=self.clock)
        self._sources = [Source(s) for s in strategies]
        self._queue = DispatchQueue(self._sources, self.clock)
        self._limiter = (
            SlidingWindowLimiter(
                self.pacing.max_calls_per_minute, self.pacing.window, clock=self.clock
            )
            if self.pacing.max_calls_per_minute
            else None
        )
        self._outbox = Outbox(
            self.store,
            {s.name: s for s in strategies},
            clock=self.clock,
            timeout=callback_timeout,
            backoff=callback_backoff,
        )
        self._counters = Counters()
        self._attempts = Attempts(
            store=self.store,
            agent=agent,
            clock=self.clock,
            queue=self._queue,
            outbox=self._outbox,
            counters=self._counters,
            retry=self.retry,
            from_=from_,
            poll_interval=poll_interval,
        )
        self._stopping: anyio.Event | None = None
        self._stop_requested = False
        self._running = False
        self._background: TaskGroup | None = None

    # -- public control ----------------------------------------------------------------------

    @property
    def strategies(self) -> list[Strategy]:
        return [source.strategy for source in self._sources]

    def stop(self) -> None:
        """Stop dialing; calls in flight are awaited up to ``drain_timeout``. Safe to call
        from callbacks and signal handlers running in the hub's event loop, and more than once."""
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
        )

    async def __aenter__(self) -> Self:
        self._background = anyio.create_task_group()
        await self._background.__aenter__()
        await self._background.start(self._run_started)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.stop()
        assert self._background is not None
        return await self._background.__aexit__(exc_type, exc, tb)

    async def _run_started(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await self.run(task_status=task_status)

    # -- the run -----------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`stop` (or, with ``exit_when_done``, until the work is done)."""
        if self._running:
            raise DispatchError("this hub is already running")
        self._running = True
        self._stopping = anyio.Event()
        if self._stop_requested:
            self._stopping.set()
        try:
            await self._open()
            async with anyio.create_task_group() as outer:
                await outer.start(self._run_store)
                agent_done = anyio.Event()
                try:
                    await outer.start(self._run_agent, agent_done)
                    self._log_ready()
                    async with anyio.create_task_group() as delivery:
                        await delivery.start(self._outbox.run)
                        task_status.started()
                        try:
                            await self._serve()
                        finally:
                            # Calls are over: deliver what is due, then stop the worker.
                            self._outbox.finish()
                finally:
                    agent_done.set()
                    self.store.close()
        finally:
            await self._close()
            self._running = False
        self._log_summary()

    async def _run_store(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # Shielded: if the hub is cancelled, calls in flight still record their outcome
        # (interrupted) before the writer stops; it stops when _serve closes the store.
        with anyio.CancelScope(shield=True):
            await self.store.run(task_status=task_status)

    async def _open(self) -> None:
        await self.store.open()
        recovered = await self.store.recover(self.recover, self.clock.now())
        if recovered:
            logger.warning(
                "store.recovered attempts=%d mode=%s (left in flight by a previous process)",
                recovered,
                self.recover,
            )
        known = await self.store.known_records()
        for source in self._sources:
            source.known = {rid: k for (name, rid), k in known.items() if name == source.name}
            source.terminal_at_start = {r for r, k in source.known.items() if k.state.terminal}
        for source in self._sources:
            await source.strategy.open()
            source.strategy._poll_requested = source.request_poll

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
        self.agent._late_reported = self._attempts.late
        await self.agent.open()
        try:
            task_status.started()
            await done.wait()
        finally:
            self.agent._late_reported = None
            try:
                await self.agent.aclose()
            except Exception:
                logger.exception("agent.close_failed")

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            for source in self._sources:
                source.strategy._poll_requested = None
                try:
                    await source.strategy.aclose()
                except Exception:
                    logger.exception("strategy.close_failed strategy=%s", source.name)
            await self.store.aclose()

    async def _serve(self) -> None:
        assert self._stopping is not None
        async with anyio.create_task_group() as calls:
            async with anyio.create_task_group() as control:
                for source in self._sources:
                    control.start_soon(self._poll_loop, source)
                    control.start_soon(self._watch, source)
                control.start_soon(self._queue.run_timers)
                control.start_soon(self._dispatch_loop, calls)
                control.start_soon(self._attempts.reconcile_late)
                await self._stopping.wait()
                control.cancel_scope.cancel()
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

    async def _poll_loop(self, source: Source) -> None:
        while True:
            source.polling = True
            try:
                await self._intake(source, poll_items(source.strategy))
            except Exception as exc:
                logger.error(
                    "poll.failed strategy=%s error=%s: %s", source.name, type(exc).__name__, exc
                )
            else:
                # Only a poll that read the whole source counts: after a failed one we do not
                # know what is left, so --exit-when-done must not call the campaign done.
                source.polls += 1
            finally:
                source.polling = False
            await self._record_queue(source)
            self._check_done()
            await self._wait_for_poll(source)

    async def _wait_for_poll(self, source: Source) -> None:
        """Sleep until the next poll is due or the strategy asks for one (``poll_now``)."""
        if not source.poll_wanted:
            source.poll_event = event = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def interval() -> None:
                    await self.clock.sleep_until(self.clock.monotonic() + self.poll_interval)
                    event.set()

                tg.start_soon(interval)
                await event.wait()
                tg.cancel_scope.cancel()
            source.poll_event = None
        source.poll_wanted = False

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
        try:
            await self.store.polled(
                source.name,
                pending=len(source.pending),
                waiting=len(source.waiting),
                at=self.clock.now(),
            )
        except StoreError as exc:
            logger.warning("store.queue_snapshot_failed strategy=%s error=%s", source.name, exc)

    async def _intake(self, source: Source, items: AsyncIterator[PollItem]) -> None:
        skips: list[tuple[Record, Skip, int]] = []
        handled = 0
        incremental = source.strategy.incremental
        async for item in items:
            if isinstance(item, Removed):
                if incremental and item.id not in source.in_flight and source.queued(item.id):
                    self._queue.withdraw(source, item.id)
                    logger.info("record.withdrawn strategy=%s record=%s", source.name, item.id)
                continue
            record = item.record() if isinstance(item, Malformed) else item
            due: float | None = None  # a replaced record keeps its retry time
            if source.queued(record.id):
                if not incremental or record.id in source.in_flight:
                    continue
                due = self._queue.withdraw(source, record.id)
                logger.info("record.updated strategy=%s record=%s", source.name, record.id)
            known = source.known.get(record.id)
            fixable = incremental and known is not None and known.skipped_for_content
            if known is not None and known.state.terminal and not fixable:
                handled += record.id in source.terminal_at_start
                continue
            attempts = known.attempts if known else 0
            decision = (
                Skip(SkipReason.MALFORMED, item.detail)
                if isinstance(item, Malformed)
                else self.admission.check(record)
            )
            if isinstance(decision, Skip):
                phone = record.phone[:32]
                if fixable and known and (known.reason, known.phone) == (decision.reason, phone):
                    handled += record.id in source.terminal_at_start
                    continue  # still broken the same way: already reported
                skips.append((record, decision, attempts))
                # Mark it now so a repeat of the same id in this poll is not skipped twice.
                source.known[record.id] = KnownRecord(
                    decision.state, attempts, None, decision.reason, phone
                )
            elif isinstance(decision, Defer):
                self._queue.delay(source, decision.record, max(decision.until, due or 0.0))
            elif due is not None:
                self._queue.delay(source, decision.record, due)
            elif known is not None and known.retry_at is not None:
                # A retry scheduled by an earlier run keeps its due time.
                wait = (known.retry_at - self.clock.now()).total_seconds()
                self._queue.delay(source, decision.record, self.clock.monotonic() + wait)
            else:
                self._queue.admit(source, decision.record)
        source.handled_in_last_poll = handled
        if skips:
            await self._record_skips(source, skips)

    async def _record_skips(self, source: Source, skips: list[tuple[Record, Skip, int]]) -> None:
        now = self.clock.now()
        async with anyio.create_task_group() as tg:  # concurrent writes share one commit
            for record, skip, attempts_made in skips:
                tg.start_soon(self._record_skip, source, record, skip, attempts_made, now)

    async def _record_skip(
        self, source: Source, record: Record, skip: Skip, attempts_made: int, now: datetime
    ) -> None:
        logger.warning(
            "record.skipped strategy=%s record=%s reason=%s detail=%s",
            source.name,
            record.id,
            skip.reason,
            skip.detail,
        )
        try:
            await self.store.skipped(
                strategy=source.name,
                record_id=record.id,
                phone=record.phone[:32],  # as given: a skipped phone may be anything
                state=skip.state,
                reason=skip.reason,
                attempts_made=attempts_made,
                at=now,
                callback=Callback(source.name, "on_skipped", record, (skip.reason.value,)),
            )
        except StoreError as exc:
            # Not persisted: forget it so the next poll decides again.
            source.known.pop(record.id, None)
            logger.error("store.skip_failed record=%s error=%s", record.id, exc)
            return
        self._counters.skipped += 1
        self._outbox.wake()

    # -- dispatching -------------------------------------------------------------------------

    async def _dispatch_loop(self, calls: TaskGroup) -> None:
        slots = anyio.Semaphore(self.pacing.max_concurrent)
        while True:
            await slots.acquire()
            source, record = await self._queue.take()
            try:
                if self._limiter is not None:
                    await self._limiter.acquire()
            except BaseException:
                self._queue.put_back(source, record)  # not dialed
                slots.release()
                raise
            calls.start_soon(self._attempt, source, record, slots)

    async def _attempt(self, source: Source, record: Record, slots: anyio.Semaphore) -> None:
        try:
            await self._attempts.run(source, record)
        finally:
            self._queue.release(source, record)
            slots.release()
            self._check_done()

    def _check_done(self) -> None:
        if not self.exit_when_done or self._stop_requested:
            return
        if any(s.polls == 0 or s.polling for s in self._sources) or not self._queue.idle():
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
