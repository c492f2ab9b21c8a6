"""SQL: a SqlStrategy's due-row poll on a large PostgreSQL table.

python -m bench.sql_poll                             # 1,000,000 rows, 1,000 due (about 35 s)
python -m bench.sql_poll --rows 200000 --due 5000
DISPATCH_BENCH_POSTGRES=postgresql://user@host/db    # the server (default: the local one)

A scratch database is created beside the given one and dropped afterwards. Its ``leads``
table holds ``--rows`` rows: ``--due`` are due (``call_after`` an hour ago), 500 more come
due in batches of 100 as the strategy's clock moves, and of the rest half are finished
(``dispatch_status`` holds an outcome) and half are due tomorrow. The recommended index is
there (docs/configuration.md):

    CREATE INDEX leads_due ON leads (call_after)
        WHERE dispatch_status IS NULL OR dispatch_status IN ('', 'dispatched')

Figures:
- plan: the top of PostgreSQL's plan for the poll's query;
- first poll: the due rows read, mapped and yielded as records;
- unchanged poll: the same poll again (nothing yielded; the query still runs);
- 100 come due: the poll after the clock passed 100 rows' call_after (yields those 100);
- without the index: the unchanged poll once the index is dropped (a scan of the table);
- whole table: a strategy with no due column, no write-back and no filter reads every row
  (rows/s), then polls it again unchanged: what a poll costs when nothing narrows it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import text

from bench._postgres import Unreachable, connect, scratch_database
from bench.csv_read import spread
from dispatch.testing import ManualClock
from strategies.sql import SqlStrategy, WriteBack

BASE = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
COMING = 5  # batches of 100 rows that come due during the run

TABLE = """
CREATE TABLE leads (
    id bigint PRIMARY KEY,
    phone text NOT NULL,
    first_name text,
    plan text,
    status text NOT NULL,
    call_after timestamptz,
    dispatch_status varchar(60),
    dispatch_call_id text
)
"""
FILL = """
INSERT INTO leads (id, phone, first_name, plan, status, call_after, dispatch_status)
SELECT n,
       '+1415' || lpad((5550000 + n % 9000000)::text, 7, '0'),
       'Ada', 'pro', 'new',
       CASE WHEN n < $2::bigint THEN $3::timestamptz - interval '1 hour'
            WHEN n < $2::bigint + 100 * $4::int
                THEN $3::timestamptz + ((n - $2::bigint) / 100 * 60 + 30) * interval '1 second'
            WHEN n % 2 = 0 THEN $3::timestamptz + interval '1 day'
            ELSE $3::timestamptz - interval '1 day' END,
       CASE WHEN n >= $2::bigint + 100 * $4::int AND n % 2 = 1 THEN 'completed: hangup' END
FROM generate_series(0, $1::bigint - 1) AS n
"""
INDEX = """
CREATE INDEX leads_due ON leads (call_after)
    WHERE dispatch_status IS NULL OR dispatch_status IN ('', 'dispatched')
"""


async def timed(poll: Callable[[], Awaitable[list[Any]]]) -> tuple[float, int]:
    start = time.perf_counter()
    items = await poll()
    return time.perf_counter() - start, len(items)


async def plan(strategy: SqlStrategy) -> str:
    view = await strategy._prepared()
    query = view.query.params(now=strategy.clock.now())
    sql = str(query.compile(strategy.engine.sync_engine, compile_kwargs={"literal_binds": True}))
    async with strategy.engine.connect() as conn:
        rows = (await conn.execute(text("EXPLAIN " + sql))).all()
    return " / ".join(r[0].strip().lstrip("-> ") for r in rows[:3])


async def bench(url: str, rows: int, due: int, repeats: int) -> None:
    conn = await connect(url)
    start = time.perf_counter()
    await conn.execute(TABLE)
    await conn.execute(FILL, rows, due, BASE, COMING)
    await conn.execute(INDEX)
    await conn.execute("ANALYZE leads")
    print(f"table: {rows:,} rows, {due:,} due, built in {time.perf_counter() - start:.1f} s")

    clock = ManualClock(wall=BASE)
    strategy = SqlStrategy(
        url,
        "leads",
        greeting="Hi {first_name}",
        metadata={"plan": "{plan}"},
        where="status = 'new'",
        due_column="call_after",
        write_back=WriteBack(call_id_column="dispatch_call_id"),
        clock=clock,
    )
    try:
        print(f"plan: {await plan(strategy)}")
        first, found = await timed(strategy.poll)
        print(f"first poll: {found:,} records in {first * 1000:,.1f} ms")
        unchanged = [(await timed(strategy.poll))[0] for _ in range(repeats)]
        print(f"unchanged poll: {spread(unchanged, 'ms', 1000, ',.2f')}")
        coming = []
        for _ in range(COMING):
            clock.advance(60)
            elapsed, found = await timed(strategy.poll)
            assert found == 100, found
            coming.append(elapsed)
        print(f"100 come due: {spread(coming, 'ms', 1000, ',.2f')} for the poll yielding them")
        await conn.execute("DROP INDEX leads_due")
        await conn.execute("ANALYZE leads")
        print(f"plan without the index: {await plan(strategy)}")
        scans = [(await timed(strategy.poll))[0] for _ in range(max(3, repeats // 4))]
        print(f"without the index, unchanged poll: {spread(scans, 'ms', 1000, ',.1f')}")
    finally:
        await strategy.aclose()

    everything = SqlStrategy(url, "leads", greeting="Hi {first_name}", metadata={"plan": "{plan}"})
    try:
        elapsed, found = await timed(everything.poll)
        print(f"whole table, first poll: {found:,} records, {found / elapsed:,.0f} rows/s")
        again = [(await timed(everything.poll))[0] for _ in range(3)]
        print(f"whole table, unchanged poll: {spread(again, 's', 1, ',.2f')}")
    finally:
        await everything.aclose()
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    try:
        async with scratch_database() as url:
            await bench(url, args.rows, args.due, args.repeats)
    except Unreachable as exc:
        print(f"sql poll: skipped, {exc}")


if __name__ == "__main__":
    anyio.run(main)
