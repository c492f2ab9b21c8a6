"""Run every benchmark with its default (under a minute) size."""

from __future__ import annotations

import subprocess
import sys

for module in ("bench.limiter", "bench.hub_throughput"):
    subprocess.run([sys.executable, "-m", module], check=True)
