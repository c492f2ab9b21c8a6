"""Long-lived workers for the calls in flight.

The dispatch loop hands each record it lets through to :meth:`Workers.hand`: an idle worker
runs it, or a new one is started when none is idle. A worker that finished waits for the next
record instead of ending, so a campaign of a million records starts about as many tasks as it
has calls at once (the concurrency cap), not a million: starting a task (its cancel scope, its
handle, the task group's bookkeeping) costs several times what handing it work does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

__all__ = ["Workers"]

Job = tuple[Any, ...]


class _Idle:
    __slots__ = ("event", "job")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.job: Job | None = None  # None when woken by close()


class Workers:
    """Runs ``run(*job)`` for each job handed over, in tasks of ``group`` that outlive a job.

    Nothing is queued here: a job handed over starts at once (the caller bounds how many run,
    with its concurrency cap). :meth:`close` lets every worker end once its job is done, so
    the task group can exit; a job handed over afterwards runs in a task of its own.
    """

    def __init__(self, group: TaskGroup, run: Callable[..., Awaitable[None]]) -> None:
        self._group = group
        self._run = run
        self._idle: list[_Idle] = []
        self._closed = False

    def hand(self, *job: Any) -> None:
        if self._idle:
            idle = self._idle.pop()
            idle.job = job
            idle.event.set()
            return
        self._group.start_soon(self._work, job)

    def close(self) -> None:
        """Idle workers end now, busy ones once their job is done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for each in idle:
            each.event.set()

    async def _work(self, job: Job) -> None:
        next_job: Job | None = job
        while next_job is not None:
            await self._run(*next_job)
            if self._closed:
                return
            idle = _Idle()
            self._idle.append(idle)
            try:
                await idle.event.wait()
            except BaseException:
                # Cancelled while idle: never handed a job again. A job handed over just
                # before still runs (and meets the cancellation itself, cleaning up).
                if idle in self._idle:
                    self._idle.remove(idle)
                if idle.job is not None:
                    await self._run(*idle.job)
                raise
            next_job = idle.job
