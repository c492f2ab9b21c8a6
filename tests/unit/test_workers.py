"""Long-lived call workers: a job handed over always runs, and workers end with close()."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from dispatch.testing import wait_all_tasks_blocked
from dispatch.workers import Workers

pytestmark = pytest.mark.anyio


async def test_a_job_handed_to_an_idle_worker_cancelled_meanwhile_still_runs() -> None:
    ran: list[int] = []

    async def job(n: int) -> None:
        ran.append(n)  # what the hub's job does first: its clean-up, under a cancellation
        await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            workers = Workers(tg, job)
            workers.hand(1)
            await wait_all_tasks_blocked()  # done with 1: idle
            tg.cancel_scope.cancel()  # the idle worker's wait is cancelled ...
            workers.hand(2)  # ... and it is handed a job before it wakes
    assert ran == [1, 2]


async def test_workers_end_with_their_last_job_once_closed() -> None:
    ran: list[int] = []

    async def job(n: int) -> None:
        ran.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:  # returns: no worker waits for ever
            workers = Workers(tg, job)
            workers.hand(1)
            workers.hand(2)
            await wait_all_tasks_blocked()
            workers.hand(3)  # taken by an idle one
            await wait_all_tasks_blocked()
            workers.close()
    assert sorted(ran) == [1, 2, 3]
