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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from anyio.abc import TaskStatus

from .abc import Strategy
from .clock import Clock
from .errors import StoreError
from .store import Store
from .store import outbox as ob

__all__ = ["Backoff", "Outbox"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before the n-th retry: ``initial * factor**(n-1)``, at most ``maximum`` seconds."""

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.initial * self.factor ** max(0, failures - 1))


class Outbox:
    def __init__(
        self,
        store: Store,
        strategies: Mapping[str, Strategy],
        *,
        clock: Clock,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        batch: int = 500,
        concurrency: int = 16,
    ) -> None:
        self.store = store
        self.strategies = strategies
        self.clock = clock
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self.batch = batch
        self.concurrency = concurrency
        self._event: anyio.Event | None = None
        self._finishing = False

    def wake(self) -> None:
        """New rows were committed: look for due ones now."""
        if self._event is not None:
            self._event.set()

    def finish(self) -> None:
        """Make one last pass over what is due, then let :meth:`run` return."""
        self._finishing = True
        self.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._event = event = anyio.Event()  # set by wake() from here on
            finishing = self._finishing
            try:
                fetched = await self._deliver_due()
                full = fetched == self.batch
                next_at = None if full else await ob.next_due(self.store.engine)
            except StoreError as exc:
                logger.error("outbox.unreadable error=%s (retrying)", exc)
                fetched, full = 0, False
                next_at = self.clock.now() + timedelta(seconds=self.backoff.initial)
            # The last pass goes on until nothing is due: a delivered callback may have been
            # holding back the next one of its record. (A failed one is due again later, so it
            # is not fetched twice.)
            if finishing and not fetched:
                pending = await ob.backlog(self.store.engine)
                if pending[0]:
                    logger.warning(
                        "outbox.pending rows=%d (delivered after the next start)", pending[0]
                    )
                return
            if full or finishing:
                continue
            await self._wait(event, next_at)

    async def _wait(self, event: anyio.Event, next_at: datetime | None) -> None:
        if next_at is None:
            await event.wait()
            return
        delay = (next_at - self.clock.now()).total_seconds()
        if delay <= 0:
            return
        async with anyio.create_task_group() as tg:

            async def timer() -> None:
                await self.clock.sleep_until(self.clock.monotonic() + delay)
                tg.cancel_scope.cancel()

            tg.start_soon(timer)
            await event.wait()
            tg.cancel_scope.cancel()

    async def _deliver_due(self) -> int:
        """Deliver what is due, one batch; return how many rows it held.

        The due rows belong to distinct records (one head per record), so they are delivered
        concurrently without breaking the order within a record.
        """
        rows = await ob.due(self.store.engine, self.clock.now(), self.batch)
        done: list[int] = []
        failed: list[tuple[ob.OutboxRow, str]] = []
        queue = iter(rows)

        async def worker() -> None:
            for row in queue:  # shared: each worker takes the next row when it is free
                error = await self._deliver(row.callback)
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

    async def _deliver(self, callback: ob.Callback) -> str | None:
        strategy = self.strategies.get(callback.strategy)
        if strategy is None:
            return f"no strategy named {callback.strategy!r} is configured"
        try:
            with anyio.fail_after(self.timeout):
                await strategy.deliver(callback.name, callback.record, *callback.args)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
