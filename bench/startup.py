"""Start-up: `dispatch --help` wall time, and `dispatch run` from exec until `hub.ready`.

python -m bench.startup --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
CONFIG = """
poll_interval = 3600
[logging]
level = "INFO"
[[strategies]]
kind = "csv"
path = "leads.csv"
"""


def help_time() -> float:
    start = time.perf_counter()
    subprocess.run([DISPATCH, "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def ready_time(workdir: Path) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(
        [DISPATCH, "run", "-c", "config.toml"], cwd=workdir, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if "hub.ready" in line:
                return time.perf_counter() - start
        raise RuntimeError("dispatch run exited before it was ready")
    finally:
        process.terminate()
        process.communicate(timeout=30)


def summary(label: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"  {label:<34}{statistics.median(ms):>8.0f} ms  ({ms[0]:.0f}-{ms[-1]:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "config.toml").write_text(CONFIG)
        (workdir / "leads.csv").write_text("id,phone\nr1,+14155552671\n")
        helps = [help_time() for _ in range(args.runs)]
        readies = [ready_time(workdir) for _ in range(args.runs)]  # the 2nd+ find a migrated store
    print(f"start-up: median of {args.runs} runs (min-max)")
    print(summary("dispatch --help", helps))
    print(summary("dispatch run until hub.ready", readies))


if __name__ == "__main__":
    main()
