"""The hub against a naive peer dispatcher, alternating A/B, each run in a fresh process.

The peer is what one might write in an afternoon: plain asyncio, one task per record, an
``aiolimiter.AsyncLimiter(10**9, 1)`` acquired per record (a limit that never bites), an
``asyncio.Semaphore`` (the concurrency) around each record's work, and per record two
SQLAlchemy transactions (``sqlite+aiosqlite``, the engine's default pool) on a fresh SQLite
file in WAL mode with ``synchronous=FULL``: the intent row INSERTed before the dial, the
outcome UPDATEd after it. The "dial" is an instant agent (``await asyncio.sleep(0)``). It
writes no callbacks, no record table, no ledger of skips: only what survives a crash.

The hub is ``bench.hub_throughput.through_hub`` (instant agent, no rate limit). Both are timed
from before the store is opened until it is closed; CPU is the process's, threads included.

    python -m bench.peer                                   # hub 20,000, peer 2,000 records, 3 runs
    python -m bench.peer --records 100000 --peer-records 20000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._runs import child, spread


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    # As the store does: WAL, and an fsync per commit. The busy timeout keeps the pool's
    # connections from failing with "database is locked" while they queue for the write lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


async def peer(db: Path, count: int, concurrency: int) -> tuple[float, float]:
    from aiolimiter import AsyncLimiter
    from sqlalchemy import (
        Column,
        DateTime,
        MetaData,
        String,
        Table,
        event,
        func,
        insert,
        select,
        update,
    )
    from sqlalchemy.ext.asyncio import create_async_engine

    metadata = MetaData()
    attempts = Table(
        "attempts",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("record_id", String(64), nullable=False),
        Column("phone", String(32), nullable=False),
        Column("state", String(20), nullable=False),
        Column("reason", String(100)),
        Column("dialed_at", DateTime, nullable=False),
        Column("ended_at", DateTime),
    )

    wall, cpu = time.perf_counter(), time.process_time()
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    event.listen(engine.sync_engine, "connect", _pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    limiter = AsyncLimiter(10**9, 1)
    slots = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with slots:
            await limiter.acquire()
            attempt = uuid.uuid4().hex
            async with engine.begin() as conn:
                await conn.execute(
                    insert(attempts).values(
                        id=attempt,
                        record_id=f"r{n}",
                        phone=f"+1415{5550000 + n:07d}",
                        state="dialing",
                        dialed_at=datetime.now(UTC),
                    )
                )
            await asyncio.sleep(0)  # the instant agent: dialed, answered, hung up
            async with engine.begin() as conn:
                await conn.execute(
                    update(attempts)
                    .where(attempts.c.id == attempt)
                    .values(state="completed", reason="hangup", ended_at=datetime.now(UTC))
                )

    await asyncio.gather(*(asyncio.create_task(one(n)) for n in range(count)))
    await engine.dispose()
    result = time.perf_counter() - wall, time.process_time() - cpu
    check = create_async_engine(f"sqlite+aiosqlite:///{db}")
    async with check.connect() as conn:
        done = await conn.scalar(
            select(func.count()).select_from(attempts).where(attempts.c.state == "completed")
        )
    await check.dispose()
    if done != count:
        raise RuntimeError(f"the peer completed {done} of {count} records")
    return result


def run_one(which: str, count: int, concurrency: int) -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if which == "hub":
            import anyio

            from bench.hub_throughput import fresh, through_hub

            wall, cpu = anyio.run(fresh, through_hub, False, count, concurrency)
        else:
            wall, cpu = asyncio.run(peer(Path(tmp) / "peer.db", count, concurrency))
    print(f"{wall:.6f} {cpu:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000, help="records per hub run")
    parser.add_argument(
        "--peer-records", type=int, default=2_000, help="records per peer run (it is slower)"
    )
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--one", choices=["hub", "peer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.records, args.concurrency)
        return

    counts = {"hub": args.records, "peer": args.peer_records}
    results: dict[str, list[tuple[float, float]]] = {"hub": [], "peer": []}
    for _ in range(args.runs):
        for which in ("hub", "peer"):  # A, B, A, B ...: drift in the machine hits both
            fields = child(
                "bench.peer",
                "--one",
                which,
                "--records",
                counts[which],
                "--concurrency",
                args.concurrency,
            )
            results[which].append((float(fields[0]), float(fields[1])))

    print(
        f"hub vs naive peer: hub {args.records:,} records, peer {args.peer_records:,}, "
        f"concurrency {args.concurrency}, {args.runs} runs alternating, a fresh process and "
        "SQLite file each"
    )
    print(f"{'path':<8}{'records/s (median, min-max)':>30}{'CPU us/record (median, min-max)':>36}")
    rates, cpus = {}, {}
    for which, runs in results.items():
        rates[which] = [counts[which] / wall for wall, _ in runs]
        cpus[which] = [cpu / counts[which] * 1e6 for _, cpu in runs]
        print(f"{which:<8}{spread(rates[which]):>30}{spread(cpus[which]):>36}")
    rate_ratio = statistics.median(rates["hub"]) / statistics.median(rates["peer"])
    cpu_ratio = statistics.median(cpus["hub"]) / statistics.median(cpus["peer"])
    print(f"hub / peer: {rate_ratio:.2f} x the records/s, {cpu_ratio:.2f} x the CPU per record")


if __name__ == "__main__":
    main()
