"""Dispatch throughput: N records through the full hub to an agent that answers instantly,
against the store's raw write path alone (the same intent, call id and outcome writes with
their outbox rows, no hub; the hub also delivers the callbacks and marks them delivered).

    python -m bench.hub_throughput --records 20000            # on a fresh SQLite file per run
    python -m bench.hub_throughput --postgres                   # on a scratch PostgreSQL database
                                                                # per run (DISPATCH_BENCH_POSTGRES)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from bench._postgres import Unreachable, scratch_database
from dispatch import AttemptState, CallEnd, DispatchHub, Record, RecordState, Store, Strategy
from dispatch.abc import Agent, Call, DialRequest
from dispatch.store.outbox import Callback


class _Instant(Call):
    def __init__(self, call_id: str) -> None:
        self.id = call_id

    async def wait(self) -> CallEnd:
        return CallEnd("hangup", 0.0)


class InstantAgent(Agent):
    async def dial(self, request: DialRequest) -> Call:
        return _Instant(request.dispatch_id)


class Generated(Strategy):
    def __init__(self, count: int) -> None:
        super().__init__("bench")
        self.records = [Record(id=f"r{n}", phone=f"+1415{5550000 + n:07d}") for n in range(count)]

    async def poll(self) -> list[Record]:
        return self.records


async def through_hub(url: str, count: int, concurrency: int) -> tuple[float, float]:
    hub = DispatchHub(
        agent=InstantAgent(),
        strategies=[Generated(count)],
        store=url,
        max_concurrent=concurrency,
        poll_interval=3600,
        exit_when_done=True,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    await hub.run()
    return time.perf_counter() - wall, time.process_time() - cpu


async def raw_store(url: str, count: int, concurrency: int) -> tuple[float, float]:
    store = Store(url)
    await store.open()
    now = time.time()
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(now, UTC)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(n: int) -> None:
        # The writes the hub cannot avoid for one answered record: the intent, the call id with
        # its on_dispatched row, the outcome with its on_completed row.
        record = Record(id=f"r{n}", phone="+14155550000")
        async with limiter:
            attempt = uuid.uuid4().hex
            await store.intent(
                attempt_id=attempt,
                strategy="raw",
                record_id=f"r{n}",
                number=1,
                phone="+14155550000",
                at=at,
            )
            await store.activated(
                attempt,
                attempt,
                at=at,
                callback=Callback("raw", "on_dispatched", record, (attempt,)),
            )
            await store.finished(
                attempt_id=attempt,
                strategy="raw",
                record_id=f"r{n}",
                state=AttemptState.COMPLETED,
                record_state=RecordState.COMPLETED,
                reason="hangup",
                call_id=attempt,
                duration=0.0,
                at=at,
                callback=Callback("raw", "on_completed", record, (attempt, "hangup")),
            )

    wall, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        async with anyio.create_task_group() as writers:
            for n in range(count):
                writers.start_soon(one, n)
        store.close()
    result = time.perf_counter() - wall, time.process_time() - cpu
    await store.aclose()
    return result


async def fresh(
    bench: Callable[[str, int, int], Awaitable[tuple[float, float]]],
    postgres: bool,
    count: int,
    concurrency: int,
) -> tuple[float, float]:
    """Run ``bench`` on an empty store: a new SQLite file, or a scratch PostgreSQL database."""
    if postgres:
        async with scratch_database() as url:
            return await bench(url, count, concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        return await bench(f"sqlite:///{Path(tmp) / 'bench.db'}", count, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--postgres", action="store_true", help="a scratch PostgreSQL database per run"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the hub logs every call at INFO; keep the figures clean

    rows = []
    for label, bench in (
        ("hub (intent+dial+outcome)", through_hub),
        ("raw store writes", raw_store),
    ):
        walls, cpus = [], []
        for _ in range(args.runs):
            try:
                wall, cpu = anyio.run(fresh, bench, args.postgres, args.records, args.concurrency)
            except Unreachable as exc:
                print(f"dispatch throughput: skipped, {exc}")
                return
            walls.append(wall)
            cpus.append(cpu)
        rows.append((label, walls, cpus))

    print(
        f"dispatch throughput: {args.records} records, concurrency {args.concurrency}, "
        f"{args.runs} runs, store {'PostgreSQL' if args.postgres else 'SQLite file'}"
    )
    print(f"{'path':<28}{'records/s (median, min-max)':>34}{'CPU us/record':>16}")
    for label, walls, cpus in rows:
        rates = sorted(args.records / w for w in walls)
        cpu_us = statistics.median(cpus) / args.records * 1e6
        spread = f"({rates[0]:,.0f}-{rates[-1]:,.0f})"
        print(f"{label:<28}{statistics.median(rates):>14,.0f} {spread:<19}{cpu_us:>16.0f}")
    hub_rate = args.records / statistics.median(rows[0][1])
    raw_rate = args.records / statistics.median(rows[1][1])
    print(f"hub / raw persistence: {hub_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
