"""Several daemons on one PostgreSQL: throughput and rate-limit utilisation for 1, 2 and 3
instances dialing one campaign through the fake Pinecall (whose record of the frames is what
is measured), the shared limit saturated.

    python -m bench.cluster                                # 600 records, 40 per 2 s, 1..3 daemons
    python -m bench.cluster --records 2000 --limit 100 --instances 1 3

Utilisation is the dials made over what the limit allows from the first dial to the last
(``limit * (span / window + 1)``); the promise is >= 90 % with several instances.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

from bench._postgres import Unreachable, scratch_database
from dispatch.testing import Answer, FakePinecall, max_in_any_window

DISPATCH = str(Path(sys.executable).with_name("dispatch"))


def config(url: str, store: str, leads: Path, limit: int, window: float, concurrent: int) -> str:
    return f"""
poll_interval = 0.5
[store]
url = "{store}"
heartbeat_interval = 0.5
heartbeat_timeout = 2.0
[cluster]
enabled = true
[pacing]
max_calls_per_minute = {limit}
window = {window}
max_concurrent = {concurrent}
[retry]
attempts = 0
[logging]
level = "WARNING"
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


async def run(instances: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        leads = workdir / "leads.csv"
        rows = [f"r{n},+1415556{n:04d}" for n in range(args.records)]
        leads.write_text("id,phone\n" + "\n".join(rows) + "\n")
        async with (
            scratch_database() as store,
            FakePinecall(default=Answer(ring=0.02, talk=args.talk)) as fake,
        ):
            conf = workdir / "config.toml"
            conf.write_text(
                config(fake.url, store, leads, args.limit, args.window, args.concurrent)
            )
            env = {**os.environ, "PINECALL_API_KEY": fake.api_key}
            env.pop("NOTIFY_SOCKET", None)
            command = [DISPATCH, "run", "-c", str(conf), "--exit-when-done"]
            processes = [
                await anyio.open_process(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL)
                for _ in range(instances)
            ]
            try:
                for process in processes:
                    await process.wait()
            finally:
                for process in processes:
                    if process.returncode is None:
                        process.kill()
            starts = sorted(r.at for r in fake.received("call.dial"))
    span = starts[-1] - starts[0]
    allowed = args.limit * (span / args.window + 1)
    return {
        "dials": len(starts),
        "span": span,
        "rate": len(starts) / span if span else float("inf"),
        "utilisation": len(starts) / allowed,
        "most_in_window": max_in_any_window(starts, args.window),
    }


async def main(args: argparse.Namespace) -> None:
    print(
        f"{args.records} records, limit {args.limit} per {args.window:g} s "
        f"({args.limit / args.window:g}/s), {args.concurrent} at once, talk {args.talk:g} s"
    )
    print(f"{'instances':>9} {'dials':>6} {'span s':>7} {'dials/s':>8} {'util.':>6} {'max/win':>8}")
    for instances in args.instances:
        r = await run(instances, args)
        print(
            f"{instances:>9} {r['dials']:>6.0f} {r['span']:>7.1f} {r['rate']:>8.1f} "
            f"{r['utilisation']:>6.1%} {r['most_in_window']:>8.0f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--limit", type=int, default=40, help="dial starts per window")
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--talk", type=float, default=0.3)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    try:
        anyio.run(main, parser.parse_args())
    except Unreachable as exc:
        sys.exit(f"bench.cluster: {exc}")
