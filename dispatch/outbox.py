"""Delivering strategy callbacks from the outbox: at least once, in order per record.

A callback is committed to the store (the ``outbox`` table) in the same transaction as the
outcome it reports. This worker delivers due rows, up to ``concurrency`` at once (callbacks of
different records may overlap); a callback that raises or runs past ``timeout`` is retried
after a capped exponential backoff, and rows still pending
when the process stops are delivered after the next start. Callbacks of one record are
delivered in the order their events happened: a failing one holds back the later ones of the
same record, never those of other records. Dialing never waits for any of this.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import cast

import anyio
from anyio.abc import TaskStatus

from .abc import CALLBACK_THREADS, CallbackName, Strategy
from .clock import Clock, wait_for
from .errors import StoreError, StoreUnavailable
from .options import Backoff
from .store import Store
from .store import outbox as ob
from .webhooks import PREFIX, Webhooks

__all__ = ["CONCURRENCY", "Backoff", "Outbox"]

# Callbacks delivered at once (of distinct records: a record's own stay in order): as many as
# one read of the due rows brings. A strategy that batches its own work gets batches worth the
# cost (the CSV write-back rewrites the file once for every outcome that arrives meanwhile:
# 100 at a time made a 4,000-row campaign rewrite it 81 times, 500 at a time 17). A plain
# (sync) callback still runs in one of anyio's worker threads, 40 at most; an async one that
# calls a service which takes fewer requests at once wants `[callbacks] concurrency` lower.
CONCURRENCY = 500
THREADS = 32  # worker threads for plain (sync) callbacks, apart from anyio's default 40

logger = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        store: Store,
        strategies: Mapping[str, Strategy],
        *,
        clock: Clock,
        webhooks: Webhooks | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        batch: int = 500,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.store = store
        self.strategies = dict(strategies)  # a reload adds and replaces strategies
        self.webhooks = webhooks
        self.clock = clock
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self.batch = batch
        self.concurrency = concurrency
        self._event: anyio.Event | None = None
        self._finishing = False
        self._finish_event: anyio.Event | None = None
        self._deadline = math.inf

    def listens(self, strategy: str, callback: str) -> bool:
        """Whether the strategy named ``strategy`` does anything with ``callback`` (an
        unknown strategy's rows are kept: it may come back with a reload)."""
        found = self.strategies.get(strategy)
        return found is None or found.listens(cast(CallbackName, callback))

    def wake(self) -> None:
        """New rows were committed: look for due ones now."""
        if self._event is not None:
            self._event.set()

    def finish(self, deadline: float = math.inf) -> None:
        """Make one last pass over what is due, then let :meth:`run` return; the pass ends
        at ``deadline`` (the event loop's time) whatever the store does."""
        self._deadline = deadline
        self._finishing = True
        if self._finish_event is not None:
            self._finish_event.set()
        self.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        CALLBACK_THREADS.set(anyio.CapacityLimiter(THREADS))  # this task's (and its workers')
        self._finish_event = anyio.Event()
        if self._finishing:
            self._finish_event.set()
        task_status.started()
        while True:
            self._event = event = anyio.Event()  # set by wake() from here on
            finishing = self._finishing
            # The last pass ends by the stop deadline, whatever the store does.
            with anyio.CancelScope(deadline=self._deadline if finishing else math.inf) as scope:
                try:
                    fetched = await self._deliver_due()
                    full = fetched == self.batch
                    next_at = (
                        None
                        if full
                        else await ob.next_due(self.store.engine, owner=self.store.owner)
                    )
                except StoreUnavailable:
                    if finishing:
                        logger.warning(
                            "outbox.pending (the store is unreachable: callbacks not yet "
                            "delivered are delivered after the next start)"
                        )
                        return
                    await self._wait_for_store()  # the store logs its outage once
                    continue
                except StoreError as exc:
                    logger.error(
                        "outbox.unreadable error=%s (retrying in %gs)", exc, self.backoff.initial
                    )
                    fetched, full = 0, False
                    next_at = self.clock.now() + timedelta(seconds=self.backoff.initial)
                # The last pass goes on until nothing is due: a delivered callback may have
                # been holding back the next one of its record. (A failed one is due again
                # later, so it is not fetched twice.)
                if finishing and not fetched:
                    await self._report_left()
                    return
            if scope.cancelled_caught:
                logger.warning(
                    "outbox.pending (stopped by the stop deadline; delivered after the next start)"
                )
                return
            if full or finishing:
                continue
            await self._wait(event, next_at)

    async def _report_left(self) -> None:
        try:
            pending = (await ob.backlog(self.store.engine)).pending
        except StoreError as exc:
            logger.warning("outbox.pending unknown (%s)", exc)
            return
        if pending:
            logger.warning("outbox.pending rows=%d (delivered after the next start)", pending)

    async def _wait_for_store(self) -> None:
        """A read failed: until the store is back or :meth:`finish` is called.

        The writer is asked first (a read can fail before any write does): if it confirms
        the outage it probes until the store is back; if it commits, this waits a backoff
        delay before reading again, so a store that fails reads only is not read in a loop.
        """
        assert self._finish_event is not None
        try:
            await self.store.check()
        except StoreUnavailable:
            pass
        except StoreError as exc:
            logger.debug("outbox.check_failed error=%s", exc)
        else:
            deadline = self.clock.monotonic() + self.backoff.initial
            await wait_for(self._finish_event, deadline, self.clock)
            return
        async with anyio.create_task_group() as tg:

            async def back() -> None:
                await self.store.wait_available()
                tg.cancel_scope.cancel()

            tg.start_soon(back)
            await self._finish_event.wait()
            tg.cancel_scope.cancel()

    async def _wait(self, event: anyio.Event, next_at: datetime | None) -> None:
        deadline = None
        if next_at is not None:
            deadline = self.clock.monotonic() + (next_at - self.clock.now()).total_seconds()
        if self.store.owner is not None:
            # In a cluster a row of ours may be unblocked by another daemon's delivery (an
            # earlier callback of the same record), which wakes nobody here: look again.
            look = self.clock.monotonic() + self.store.heartbeat_options.interval
            deadline = look if deadline is None else min(deadline, look)
        await wait_for(event, deadline, self.clock)

    async def _deliver_due(self) -> int:
        """Deliver what is due, one batch; return how many rows it held.

        The due rows belong to distinct records (one head per record), so they are delivered
        concurrently without breaking the order within a record.
        """
        rows = await ob.due(self.store.engine, self.clock.now(), self.batch, owner=self.store.owner)
        done: list[int] = []
        failed: list[tuple[ob.OutboxRow, str]] = []
        queue = iter(rows)

        async def worker() -> None:
            for row in queue:  # shared: each worker takes the next row when it is free
                error = await self._deliver(row)
                if error is None:
                    done.append(row.id)
                else:
                    failed.append((row, error))

        async with anyio.create_task_group() as tg:
            for _ in range(min(self.concurrency, len(rows))):
                tg.start_soon(worker)
        for row, error in failed:
            failures = row.deliveries + 1
            delay = self.backoff.delay(failures)
            logger.error(
                "callback.failed strategy=%s callback=%s record=%s delivery=%d error=%s "
                "retry_in=%gs",
                row.callback.strategy,
                row.callback.name,
                row.callback.record.id,
                failures,
                error,
                delay,
            )
            next_at = self.clock.now() + timedelta(seconds=delay)
            await self.store.delivery_failed(row.id, failures, next_at, error)
        if done:
            await self.store.delivered(done, self.clock.now())
        return len(rows)

    async def _deliver(self, row: ob.OutboxRow) -> str | None:
        callback = row.callback
        try:
            with anyio.fail_after(self.timeout):
                if callback.strategy.startswith(PREFIX):
                    if self.webhooks is None:
                        return "no webhooks are configured"
                    await self.webhooks.send(row)
                    return None
                strategy = self.strategies.get(callback.strategy)
                if strategy is None:
                    return f"no strategy named {callback.strategy!r} is configured"
                await strategy.deliver(callback.name, callback.record, *callback.args)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and not str(exc):  # ours: fail_after's
                return f"TimeoutError: ran past its {self.timeout:g}s timeout"
            return f"{type(exc).__name__}: {exc}"
        return None
