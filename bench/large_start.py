"""A large campaign at start-up, and the event loop while a large source is taken in.

a) Start-up on a store that already holds N finished records: the store is migrated once,
   then N ``completed`` rows of strategy ``bench`` are put into its ``records`` table with
   plain ``sqlite3``. A fresh process then runs a hub (``exit_when_done=True``) whose
   strategy yields those same N records: all already handled, nothing is dialed, and the hub
   stops after its first poll. Printed: exec to the hub's stop, its construction to its stop,
   and the two phases of that (to the first ``poll()`` call: open, claim, recover, the known
   records read; from it to the stop: the N records taken in, the store closed). Separately,
   in a fresh process, ``await store.known_records()`` alone (on a connection already open).
b) The longest event-loop stall while the hub takes in and dials N new records (instant
   agent, as ``bench.hub_throughput``): a side task sleeps 10 ms in a loop and records how
   much later than asked each wake-up came, from ``hub.run()`` until it returns.

    python -m bench.large_start                                   # a) 100,000, b) 20,000
    python -m bench.large_start --records 1000000 --stall-records 100000
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench._runs import child, spread

STRATEGY = "bench"  # bench.hub_throughput.Generated's name, and its record ids and phones
TICK = 0.01


def build(db: Path, count: int) -> None:
    """A migrated store whose records table holds ``count`` completed records."""
    import anyio

    from dispatch import Store

    async def migrate() -> None:
        store = Store(f"sqlite:///{db}")
        await store.open()
        await store.aclose()

    anyio.run(migrate)
    at = "2026-01-01 00:00:00.000000"  # how the store writes its UTC times on SQLite
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO records (strategy, record_id, phone, state, attempts, reason, call_id, "
            "created_at, updated_at) VALUES (?, ?, ?, 'completed', 1, 'hangup', ?, ?, ?)",
            (
                (STRATEGY, f"r{n}", f"+1415{5550000 + n:07d}", f"call-{n}", at, at)
                for n in range(count)
            ),
        )
    conn.close()


def start_child(db: Path, count: int, exec_at: float) -> None:
    import anyio

    from bench.hub_throughput import Generated, InstantAgent
    from dispatch import DispatchHub, Record

    class Timed(Generated):
        first_poll: float | None = None

        async def poll(self) -> list[Record]:
            if self.first_poll is None:
                self.first_poll = time.perf_counter()
            return await super().poll()

    async def start() -> None:
        strategy = Timed(count)  # the strategy's own records are built before the clock starts
        begin = time.perf_counter()
        hub = DispatchHub(
            agent=InstantAgent(),
            strategies=[strategy],
            store=f"sqlite:///{db}",
            poll_interval=3600,
            exit_when_done=True,
        )
        await hub.run()
        end = time.perf_counter()
        since_exec = time.time() - exec_at
        stats = hub.statistics()
        if stats.already_handled != count or stats.dialed:
            raise RuntimeError(
                f"expected {count} already handled and none dialed, got {stats.already_handled} "
                f"already handled and {stats.dialed} dialed"
            )
        assert strategy.first_poll is not None
        print(
            f"{since_exec:.6f} {end - begin:.6f} {strategy.first_poll - begin:.6f} "
            f"{end - strategy.first_poll:.6f}"
        )

    anyio.run(start)


def known_child(db: Path, count: int) -> None:
    import anyio

    from dispatch import Store

    async def read() -> None:
        store = Store(f"sqlite:///{db}")
        await store.open(migrate=False)
        await store.known_records("no such strategy")  # connect first: time the read alone
        begin = time.perf_counter()
        known = await store.known_records()
        took = time.perf_counter() - begin
        await store.aclose()
        if len(known) != count:
            raise RuntimeError(f"known_records() returned {len(known)} of {count}")
        print(f"{took:.6f}")

    anyio.run(read)


def stall_child(count: int, concurrency: int) -> None:
    import anyio

    from bench.hub_throughput import Generated, InstantAgent
    from dispatch import DispatchHub

    async def stalls(url: str) -> None:
        hub = DispatchHub(
            agent=InstantAgent(),
            strategies=[Generated(count)],
            store=url,
            max_concurrent=concurrency,
            poll_interval=3600,
            exit_when_done=True,
        )
        late: list[tuple[float, float]] = []  # (how late, when: seconds since the start)
        begin = time.perf_counter()

        async def sample() -> None:
            while True:
                asleep = time.perf_counter()
                await anyio.sleep(TICK)
                woke = time.perf_counter()
                late.append((woke - asleep - TICK, woke - begin))

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            await hub.run()
            tg.cancel_scope.cancel()
        wall = time.perf_counter() - begin
        worst, at = max(late)
        p99 = (
            statistics.quantiles([d for d, _ in late], n=100, method="inclusive")[98]
            if len(late) > 1
            else worst
        )
        print(f"{worst * 1000:.3f} {p99 * 1000:.3f} {at:.3f} {len(late)} {wall:.6f}")

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(stalls, f"sqlite:///{Path(tmp) / 'stall.db'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000, help="a) finished records")
    parser.add_argument("--stall-records", type=int, default=20_000, help="b) new records")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per figure")
    parser.add_argument("--concurrency", type=int, default=1_000, help="b) the hub's")
    parser.add_argument("--one", choices=["start", "known", "stall"], help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--exec-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "start":
        logging.disable(logging.WARNING)
        start_child(args.db, args.records, args.exec_at)
        return
    if args.one == "known":
        known_child(args.db, args.records)
        return
    if args.one == "stall":
        stall_child(args.records, args.concurrency)
        return

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "large.db"
        began = time.perf_counter()
        build(db, args.records)
        built = time.perf_counter() - began
        starts, knowns = [], []
        for _ in range(args.runs):
            exec_at = time.time()
            fields = child(
                "bench.large_start",
                "--one",
                "start",
                "--records",
                args.records,
                "--db",
                db,
                "--exec-at",
                exec_at,
            )
            starts.append([float(f) for f in fields])
        for _ in range(args.runs):
            fields = child(
                "bench.large_start", "--one", "known", "--records", args.records, "--db", db
            )
            knowns.append(float(fields[0]))

    def ms(values: list[float]) -> str:
        return spread([v * 1000 for v in values]) + " ms"

    print(
        f"a) start-up with {args.records:,} finished records in the store (SQLite, built in "
        f"{built:.1f} s), {args.runs} runs, a fresh process each"
    )
    print(f"  {'exec to the hub stopped (first poll done)':<50}{ms([s[0] for s in starts])}")
    print(f"  {'hub constructed to stopped':<50}{ms([s[1] for s in starts])}")
    print(f"  {'  of which: to the first poll() call':<50}{ms([s[2] for s in starts])}")
    print(f"  {'  of which: the records taken in, the stop':<50}{ms([s[3] for s in starts])}")
    print(f"  {'await store.known_records() alone':<50}{ms(knowns)}")

    stalls = []
    for _ in range(args.runs):
        fields = child(
            "bench.large_start",
            "--one",
            "stall",
            "--records",
            args.stall_records,
            "--concurrency",
            args.concurrency,
        )
        stalls.append([float(f) for f in fields])
    print(
        f"b) event-loop stalls while the hub takes in and dials {args.stall_records:,} new "
        f"records (a {TICK * 1000:.0f} ms sleep in a loop; lateness of each wake-up), "
        f"{args.runs} runs"
    )
    print(f"  {'longest stall':<50}{spread([s[0] for s in stalls], ',.1f')} ms")
    print(f"  {'99th percentile':<50}{spread([s[1] for s in stalls], ',.1f')} ms")
    worst = max(stalls)
    print(
        f"  {'worst run: the longest stall ended at':<50}{worst[2]:.2f} s of {worst[4]:.2f} s "
        f"({worst[3]:.0f} wake-ups)"
    )


if __name__ == "__main__":
    main()
