"""Helpers shared by the benchmarks that run each measurement in a fresh process."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Sequence


def child(module: str, *args: object) -> list[str]:
    """Run ``python -m module args...`` in a fresh interpreter; the fields of its last line."""
    out = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{module} {' '.join(map(str, args))} printed nothing")
    return lines[-1].split()


def spread(values: Sequence[float], fmt: str = ",.0f") -> str:
    """``median (min-max)`` of ``values``, each formatted with ``fmt``."""
    ordered = sorted(values)
    median = statistics.median(ordered)
    if len(ordered) == 1:
        return f"{median:{fmt}}"
    return f"{median:{fmt}} ({ordered[0]:{fmt}}-{ordered[-1]:{fmt}})"
