"""Several daemons on one PostgreSQL: throughput and rate-limit utilisation for 1, 2 and 3
instances dialing one campaign through the fake Pinecall, the shared limit saturated. The fake
runs in a process of its own (the acceptance test's, ``tests/fake_platform.py``), and its
record of when each dial arrived is what is measured.

    python -m bench.cluster                                # 600 records, 50 per 5 s, 1..3 daemons
    python -m bench.cluster --records 2000 --limit 100 --instances 1 3

Utilisation: the limit makes any ``limit + 1`` consecutive starts span a window at least;
saturated at the full rate they span exactly that. It is measured over whole such spans, from
the first start, so the bunching of starts inside a window does not weigh (the promise: >= 90 %
with several daemons). Also: the most starts the platform saw in any window (never above the
limit), and the claims lost under the cluster's lock (another daemon had the record).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from bench._postgres import Unreachable, scratch_database
from dispatch.testing import max_in_any_window

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
REPO = Path(__file__).resolve().parents[1]


def config(url: str, store: str, leads: Path, args: argparse.Namespace) -> str:
    return f"""
poll_interval = 0.5
[store]
url = "{store}"
heartbeat_interval = 0.5
heartbeat_timeout = 2.0
[cluster]
enabled = true
[pacing]
max_calls_per_minute = {args.limit}
window = {args.window}
max_concurrent = {args.concurrent}
[retry]
attempts = 0
[logging]
level = "INFO"
[agent]
kind = "pinecall"
url = "{url}"
agent_id = "dialer"
phone_numbers = ["+13185550100"]
[[strategies]]
kind = "csv"
name = "leads"
path = "{leads}"
watch = false
"""


def utilisation(starts: list[float], limit: int, window: float) -> float:
    spans = (len(starts) - 1) // limit
    return spans * window / (starts[spans * limit] - starts[0]) if spans else float("nan")


async def _drain(stream: BufferedByteReceiveStream) -> None:
    """Read the fake's report of each dial (what is measured is in its file)."""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            await stream.receive()


async def run(instances: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        leads = workdir / "leads.csv"
        rows = [f"r{n},+1415556{n:04d}" for n in range(args.records)]
        leads.write_text("id,phone\n" + "\n".join(rows) + "\n")
        frames = workdir / "platform.json"
        fake = [sys.executable, "-m", "tests.fake_platform", str(frames), "0.02", str(args.talk)]
        async with (
            scratch_database() as store,
            await anyio.open_process(fake, cwd=REPO, stderr=None) as platform,
        ):
            assert platform.stdout is not None
            assert platform.stdin is not None
            reported = BufferedByteReceiveStream(platform.stdout)
            hello = json.loads(await reported.receive_until(b"\n", 1 << 16))
            conf = workdir / "config.toml"
            conf.write_text(config(hello["url"], store, leads, args))
            env = {**os.environ, "PINECALL_API_KEY": hello["api_key"]}
            env.pop("NOTIFY_SOCKET", None)
            command = [DISPATCH, "run", "-c", str(conf), "--exit-when-done"]
            logs = [workdir / f"daemon-{n}.log" for n in range(instances)]
            processes = []
            for log in logs:
                with log.open("w") as out:
                    processes.append(
                        await anyio.open_process(
                            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
                        )
                    )
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain, reported)  # a full pipe would stop the fake
                    for process in processes:
                        await process.wait()
                    await platform.stdin.aclose()
                    await platform.wait()
            finally:
                for process in processes:
                    if process.returncode is None:
                        process.kill()
            received = json.loads(frames.read_text())["received"]
        starts = sorted(at for _, f, at in received if f.get("event") == "call.dial")
        lost = sum(log.read_text().count("seen=claim") for log in logs)
    span = starts[-1] - starts[0]
    return {
        "dials": len(starts),
        "span": span,
        "rate": len(starts) / span if span else float("inf"),
        "utilisation": utilisation(starts, args.limit, args.window),
        "most_in_window": max_in_any_window(starts, args.window),
        "lost": lost,
    }


async def main(args: argparse.Namespace) -> None:
    print(
        f"{args.records} records, limit {args.limit} per {args.window:g} s "
        f"({args.limit / args.window:g}/s), {args.concurrent} at once, talk {args.talk:g} s"
    )
    print(f"{'instances':>9} {'dials':>6} {'span s':>7} {'dials/s':>8} {'util.':>6} "
          f"{'max/win':>8} {'lost':>5}")  # fmt: skip
    for instances in args.instances:
        r = await run(instances, args)
        print(
            f"{instances:>9} {r['dials']:>6.0f} {r['span']:>7.1f} {r['rate']:>8.1f} "
            f"{r['utilisation']:>6.1%} {r['most_in_window']:>8.0f} {r['lost']:>5.0f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--limit", type=int, default=50, help="dial starts per window")
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--talk", type=float, default=0.3)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    try:
        anyio.run(main, parser.parse_args())
    except Unreachable as exc:
        sys.exit(f"bench.cluster: {exc}")
