"""Run every benchmark with its default (under a minute) size."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "bench.limiter",
    "bench.hub_throughput",
    "bench.peer",
    "bench.ceiling",
    "bench.scaling",
    "bench.large_start",
    "bench.realistic",
    "bench.csv_read",
    "bench.sql_poll",
    "bench.memory",
    "bench.startup",
    "bench.cluster",
]

for module in MODULES:
    subprocess.run([sys.executable, "-m", module], check=True)
# The same dispatch throughput on PostgreSQL (the local server, or DISPATCH_BENCH_POSTGRES).
subprocess.run([sys.executable, "-m", "bench.hub_throughput", "--postgres"], check=True)
