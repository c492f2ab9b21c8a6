"""What one process can group-commit: the ceiling for a SQLite store written in batches.

Plain stdlib ``sqlite3`` on a fresh file, WAL, ``synchronous=FULL`` (the store's settings), no
event loop and no ORM. Per record two rows are written, as the hub's intent writes them: an
INSERT into an attempts-like table (id, strategy, record_id, number, phone, state, dialed_at)
and an INSERT into a records-like table (strategy, record_id, phone, state, attempts,
updated_at). ``--second update`` writes the attempt's outcome instead (INSERT, then an UPDATE
of the same row). ``executemany`` in batches of ``--batch`` records, one transaction (one
commit, one fsync) per batch.

    python -m bench.ceiling                               # 100,000 records, 3 runs
    python -m bench.ceiling --with-hub                    # then the hub, 20,000 records a run
    python -m bench.ceiling --records 1000000 --with-hub --hub-records 100000
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench._runs import spread

SCHEMA = """
CREATE TABLE attempts (
    id VARCHAR(64) PRIMARY KEY,
    strategy VARCHAR(200) NOT NULL,
    record_id VARCHAR(500) NOT NULL,
    number INTEGER NOT NULL,
    phone VARCHAR(32) NOT NULL,
    state VARCHAR(20) NOT NULL,
    reason VARCHAR(500),
    dialed_at DATETIME NOT NULL,
    ended_at DATETIME,
    UNIQUE (strategy, record_id, number)
);
CREATE TABLE records (
    strategy VARCHAR(200) NOT NULL,
    record_id VARCHAR(500) NOT NULL,
    phone VARCHAR(32) NOT NULL,
    state VARCHAR(20) NOT NULL,
    attempts INTEGER NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (strategy, record_id)
);
"""
INSERT_ATTEMPT = (
    "INSERT INTO attempts (id, strategy, record_id, number, phone, state, dialed_at) "
    "VALUES (?, 'bench', ?, 1, ?, 'dialing', ?)"
)
INSERT_RECORD = (
    "INSERT INTO records (strategy, record_id, phone, state, attempts, updated_at) "
    "VALUES ('bench', ?, ?, 'dialing', 1, ?)"
)
UPDATE_ATTEMPT = (
    "UPDATE attempts SET state = 'completed', reason = 'hangup', ended_at = ? WHERE id = ?"
)


def ceiling(db: Path, count: int, batch: int, second: str) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    conn = sqlite3.connect(db, isolation_level=None)  # we BEGIN and COMMIT ourselves
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    for start in range(0, count, batch):
        at = datetime.now(UTC).isoformat(" ")
        rows = [
            (uuid.uuid4().hex, f"r{n}", f"+1415{5550000 + n:07d}", at)
            for n in range(start, min(start + batch, count))
        ]
        conn.execute("BEGIN")
        conn.executemany(INSERT_ATTEMPT, rows)
        if second == "insert":
            conn.executemany(INSERT_RECORD, [(r, phone, at) for _, r, phone, at in rows])
        else:
            conn.executemany(UPDATE_ATTEMPT, [(at, attempt) for attempt, *_ in rows])
        conn.execute("COMMIT")
    conn.close()
    result = time.perf_counter() - wall, time.process_time() - cpu
    check = sqlite3.connect(db)
    written = check.execute("SELECT count(*) FROM attempts").fetchone()[0]
    check.close()
    if written != count:
        raise RuntimeError(f"wrote {written} attempts of {count}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000, help="records per transaction")
    parser.add_argument(
        "--second",
        choices=["insert", "update"],
        default="insert",
        help="the second row per record: a records-like INSERT, or an UPDATE of the attempt",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--with-hub", action="store_true", help="then the hub (through_hub), as many runs"
    )
    parser.add_argument(
        "--hub-records", type=int, default=20_000, help="records per hub run (it is slower)"
    )
    parser.add_argument("--concurrency", type=int, default=1_000, help="the hub's")
    args = parser.parse_args()

    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(ceiling(Path(tmp) / "ceiling.db", args.records, args.batch, args.second))
    rates = [args.records / wall for wall, _ in runs]
    cpus = [cpu / args.records * 1e6 for _, cpu in runs]
    second = "records INSERT" if args.second == "insert" else "attempts UPDATE"
    print(
        f"group-commit ceiling: {args.records:,} records, attempts INSERT + {second} per "
        f"record, {args.batch:,} records per commit, WAL, synchronous=FULL, {args.runs} runs"
    )
    print(f"  {'ceiling':<22}{spread(rates)} records/s, CPU {spread(cpus)} us/record")
    if not args.with_hub:
        return

    import anyio

    from bench.hub_throughput import fresh, through_hub

    logging.disable(logging.WARNING)
    hub = [
        anyio.run(fresh, through_hub, False, args.hub_records, args.concurrency)
        for _ in range(args.runs)
    ]
    hub_rates = [args.hub_records / wall for wall, _ in hub]
    hub_cpus = [cpu / args.hub_records * 1e6 for _, cpu in hub]
    label = f"hub, {args.hub_records:,} records"
    print(f"  {label:<22}{spread(hub_rates)} records/s, CPU {spread(hub_cpus)} us/record")
    ratio = statistics.median(hub_rates) / statistics.median(rates)
    print(f"  hub / ceiling: {ratio:.3f}")


if __name__ == "__main__":
    main()
