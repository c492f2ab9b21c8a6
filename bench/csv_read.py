"""CSV: first read, unchanged-file poll, full rescan, append pickup latency, memory.

python -m bench.csv_read                 # 500,000 rows (about 30 s)
python -m bench.csv_read --rows 1000000  # the size the budgets are set for (about 60 s)

Figures:
- first read: a fresh CsvStrategy reads the whole file into records (rows/s);
- unchanged poll: ``await strategy.poll()`` on the file it has read (one ``stat``);
- rescan: the periodic full re-read of the unchanged file (parse + diff, nothing yielded);
- pickup: a hub runs on the file with every existing row already done (``skip_if``), the
  watcher on; 100 rows are appended; time from the end of the write to the 100th dial;
- memory: what the strategy keeps after the first read (tracemalloc), and the peak while
  reading (the records it returns included).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from bench.hub_throughput import InstantAgent
from dispatch import DialRequest, DispatchHub
from dispatch.abc import Call, PollItem
from strategies import CsvStrategy

HEADER = "id,phone,first_name,company,plan,done\n"


def line(n: int, done: str = "") -> str:
    return f"lead-{n},+1415{5550000 + n % 9_000_000:07d},Ada,Lovelace Labs,pro,{done}\n"


def write(path: Path, rows: int, done: str = "") -> None:
    with path.open("w") as f:
        f.write(HEADER)
        f.writelines(line(n, done) for n in range(rows))


def strategy(path: Path, **options: object) -> CsvStrategy:
    return CsvStrategy(
        path,
        greeting="Hi {first_name}",
        metadata={"plan": "{plan}", "company": "{company}"},
        **options,  # type: ignore[arg-type]
    )


def spread(values: list[float], unit: str, scale: float = 1.0, fmt: str = ",.0f") -> str:
    v = sorted(x * scale for x in values)
    return f"{statistics.median(v):{fmt}} {unit} ({v[0]:{fmt}}-{v[-1]:{fmt}})"


def first_reads(path: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        fresh = strategy(path)
        start = time.perf_counter()
        items = fresh.read()
        times.append(time.perf_counter() - start)
        del items
    return times


async def unchanged_polls(path: Path, polls: int) -> tuple[list[float], list[float]]:
    s = strategy(path)
    s.read()
    times = []
    for _ in range(polls):
        start = time.perf_counter()
        assert await s.poll() == []
        times.append(time.perf_counter() - start)
    rescans = []
    for _ in range(3):
        start = time.perf_counter()
        assert s.read(full=True) == []
        rescans.append(time.perf_counter() - start)
    return times, rescans


def memory(path: Path) -> tuple[float, float]:
    tracemalloc.start()
    s = strategy(path)
    items = s.read()
    peak = tracemalloc.get_traced_memory()[1]
    del items
    kept = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del s
    return kept / 2**20, peak / 2**20


class FirstPoll(CsvStrategy):
    """Says when its first poll (the full read) is over."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polled = anyio.Event()

    async def poll(self) -> list[PollItem]:
        items = await super().poll()
        self.polled.set()
        return items


class TimedAgent(InstantAgent):
    def __init__(self) -> None:
        self.dials = 0
        self.target = 0
        self.reached: Callable[[], None] | None = None

    async def dial(self, request: DialRequest) -> Call:
        self.dials += 1
        if self.dials == self.target and self.reached is not None:
            self.reached()
        return await super().dial(request)


async def pickup(path: Path, tmp: Path, rows: int, runs: int) -> list[float]:
    agent = TimedAgent()
    source = FirstPoll(
        path, greeting="Hi {first_name}", metadata={"plan": "{plan}"}, skip_if={"done": ["x"]}
    )
    hub = DispatchHub(
        agent=agent,
        strategies=[source],
        store=f"sqlite:///{tmp / 'pickup.db'}",
        poll_interval=3600,
        max_concurrent=1000,
    )
    latencies = []
    async with hub:
        with anyio.fail_after(300):
            await source.polled.wait()
        await anyio.sleep(0.5)  # let the watcher start
        for run in range(runs):
            done = anyio.Event()
            agent.target = agent.dials + 100
            agent.reached = done.set
            text = "".join(line(rows + run * 100 + n) for n in range(100))
            with path.open("a") as f:
                f.write(text)
            start = time.perf_counter()
            with anyio.fail_after(30):
                await done.wait()
            latencies.append(time.perf_counter() - start)
            await anyio.sleep(0.2)  # let the calls settle before the next append
        hub.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "leads.csv"
        write(path, args.rows)
        size = path.stat().st_size / 2**20
        reads = first_reads(path, args.runs)
        polls, rescans = anyio.run(unchanged_polls, path, 200)
        kept, peak = memory(path)
        done = tmp / "done.csv"
        write(done, args.rows, done="x")
        path.unlink()
        latencies = anyio.run(pickup, done, tmp, args.rows, 5)
    print(f"csv: {args.rows:,} rows ({size:.0f} MB); median (min-max)")
    rates = [args.rows / t for t in reads]
    print(f"  first read into records     {spread(rates, 'rows/s')}  [{args.runs} runs]")
    print(f"  poll of the unchanged file  {spread(polls, 'us', 1e6, ',.1f')}  [200 polls]")
    print(f"  full rescan, nothing new    {spread(rescans, 's', 1, '.2f')}  [3 runs]")
    print(f"  append 100 -> 100th dial    {spread(latencies, 'ms', 1e3, ',.1f')}  [5 runs]")
    print(f"  memory kept by the strategy {kept:,.0f} MB (peak while reading {peak:,.0f} MB)")


if __name__ == "__main__":
    main()
