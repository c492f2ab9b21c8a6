"""A realistic path: a CSV campaign with write-back and a Python callback, through the hub.

A ``strategies.CsvStrategy`` over a generated file of N rows (``id,phone,first_name``), its
outcomes written back into the file (``WriteBack()``: the ``dispatch_status`` column), the
file watched (the default), and an ``on_completed`` function assigned on the instance that
counts its calls. The agent answers at once (``bench.hub_throughput.InstantAgent``); the hub
runs with ``exit_when_done=True``, so its ``run()`` returns once every record is done and its
callbacks are delivered. Timed from ``hub.run()`` to its return (the file read included),
in a fresh process with a fresh CSV and SQLite file per run. Afterwards the script checks
that ``on_completed`` ran for every record and every row's status cell says ``completed``.

Each write-back re-reads and rewrites the whole file (the outcomes that arrive meanwhile share
it), so the CPU per record grows with the file: the default size is small to stay under a
minute.

    python -m bench.realistic                          # 2,000 rows, 3 runs, a sync callback
    python -m bench.realistic --records 10000          # the full figure (minutes, not seconds)
    python -m bench.realistic --callback async --no-watch
    python -m bench.realistic --loop uvloop            # if uvloop is installed
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._runs import child, spread


def write_leads(path: Path, count: int) -> None:
    with path.open("w", newline="") as f:
        f.write("id,phone,first_name\n")
        f.writelines(f"lead-{n},+1415{5550000 + n:07d},Ada{n % 100}\n" for n in range(count))


def completed_rows(path: Path) -> tuple[int, int]:
    """(rows, rows whose status cell says completed)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    done = sum(1 for row in rows if (row.get("dispatch_status") or "").startswith("completed"))
    return len(rows), done


async def campaign(
    path: Path, db: str, concurrency: int, callback: str, watch: bool
) -> tuple[float, ...]:
    from bench.hub_throughput import InstantAgent
    from dispatch import DispatchHub, Record
    from strategies import CsvStrategy, WriteBack

    strategy = CsvStrategy(path, write_back=WriteBack(), watch=watch)
    calls: list[str] = []
    lock = threading.Lock()  # a sync callback runs in worker threads, up to 16 at a time

    def on_completed(record: Record, call_id: str, reason: str) -> None:
        with lock:
            calls.append(record.id)

    async def on_completed_async(record: Record, call_id: str, reason: str) -> None:
        calls.append(record.id)

    strategy.on_completed = on_completed if callback == "sync" else on_completed_async  # type: ignore[method-assign]
    hub = DispatchHub(
        agent=InstantAgent(),
        strategies=[strategy],
        store=db,
        max_concurrent=concurrency,
        poll_interval=3600,
        exit_when_done=True,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    await hub.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, len(calls), len(set(calls))


def run_one(count: int, concurrency: int, callback: str, loop: str, watch: bool) -> None:
    import anyio

    logging.disable(logging.WARNING)
    options: dict[str, Any] = {"use_uvloop": True} if loop == "uvloop" else {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leads.csv"
        write_leads(path, count)
        db = f"sqlite:///{Path(tmp) / 'dispatch.db'}"
        wall, cpu, calls, distinct = anyio.run(
            campaign, path, db, concurrency, callback, watch, backend_options=options
        )
        rows, done = completed_rows(path)
    print(f"{wall:.6f} {cpu:.6f} {calls} {distinct} {rows} {done}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2_000, help="CSV rows")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument(
        "--callback", choices=["sync", "async"], default="sync", help="the on_completed kind"
    )
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument(
        "--no-watch", action="store_true", help="watch=False: only the poll interval re-reads"
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        parser.error("--loop uvloop: uvloop is not installed")
    if args.one:
        run_one(args.records, args.concurrency, args.callback, args.loop, not args.no_watch)
        return

    rates, cpus, errors = [], [], []
    for run in range(1, args.runs + 1):
        fields = child(
            "bench.realistic",
            "--one",
            "--records",
            args.records,
            "--concurrency",
            args.concurrency,
            "--callback",
            args.callback,
            "--loop",
            args.loop,
            *(["--no-watch"] if args.no_watch else []),
        )
        wall, cpu = float(fields[0]), float(fields[1])
        calls, distinct, rows, done = map(int, fields[2:])
        rates.append(args.records / wall)
        cpus.append(cpu / args.records * 1e6)
        if distinct != args.records or rows != args.records or done != args.records:
            errors.append(
                f"run {run}: on_completed for {distinct} of {args.records} records "
                f"({calls} calls); {done} of {rows} rows written back as completed"
            )
        elif calls != distinct:
            extra = calls - distinct
            print(f"note: run {run} delivered {extra} on_completed twice (at least once)")

    print(
        f"realistic CSV campaign: {args.records:,} rows, write-back, {args.callback} "
        f"on_completed, {'not ' if args.no_watch else ''}watched, instant agent, "
        f"concurrency {args.concurrency}, {args.loop} loop, "
        f"{args.runs} runs (fresh process and files each)"
    )
    print(f"  {spread(rates)} records/s, CPU {spread(cpus)} us/record")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
