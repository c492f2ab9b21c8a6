"""Memory: resident set size of a process holding an N-record campaign in the hub.

The records are polled and queued (pending) behind one call that never ends, which is the
state of a large campaign early in its run. Runs in a fresh process per size.

    python -m bench.memory --records 100000      # default; 1000000 for the full figure
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def hold(count: int, db: str) -> tuple[float, float]:
    from dispatch import DispatchHub, Record, Strategy
    from dispatch.testing import ScriptedAgent

    class Generated(Strategy):
        async def poll(self) -> list[Record]:
            return [Record(id=f"r{n}", phone=f"+1415{5550000 + n:07d}") for n in range(count)]

    agent = ScriptedAgent(auto_end=False)
    hub = DispatchHub(
        agent=agent, strategies=[Generated("bench")], store=db, poll_interval=3600, drain_timeout=0
    )
    baseline = rss_mb()
    async with anyio.create_task_group() as tg:
        tg.start_soon(hub.run)
        await agent.wait_for_live(1)
        # A benchmark, not a test: polling the counter is fine here.
        while hub.statistics().pending < count - 1:  # noqa: ASYNC110
            await anyio.sleep(0.05)
        held = rss_mb()
        hub.stop()
    return baseline, held


def child(count: int) -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        baseline, held = anyio.run(hold, count, f"sqlite:///{Path(tmp) / 'm.db'}")
    print(f"{count} {baseline:.1f} {held:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.records)
        return
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", "--records", str(args.records)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    count, baseline, held = int(out[0]), float(out[1]), float(out[2])
    print(f"memory: {count:,} records queued in the hub")
    print(
        f"  RSS before the poll {baseline:.0f} MB, holding them {held:.0f} MB: "
        f"{(held - baseline) * 1024 * 1024 / count:,.0f} bytes per record"
    )


if __name__ == "__main__":
    main()
