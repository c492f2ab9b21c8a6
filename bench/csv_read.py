"""CSV: first read of an N-row file into records, and a poll of the unchanged file.

python -m bench.csv_read --rows 200000       # default; 1000000 for the full figure
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from strategies import CsvStrategy


def write(path: Path, rows: int) -> None:
    with path.open("w") as f:
        f.write("id,phone,first_name,company,plan\n")
        for n in range(rows):
            f.write(f"lead-{n},+1415{5550000 + n % 9_000_000:07d},Ada,Lovelace Labs,pro\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leads.csv"
        write(path, args.rows)
        size = path.stat().st_size / 1024 / 1024
        strategy = CsvStrategy(path, greeting="Hi {first_name}", metadata={"plan": "{plan}"})
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            records = strategy.read()
            times.append(time.perf_counter() - start)
        assert len(records) == args.rows
    first = statistics.median(times)
    print(f"csv: {args.rows:,} rows ({size:.0f} MB), median of {args.runs} reads")
    print(f"  full read into records: {first:.2f} s = {args.rows / first:,.0f} rows/s")
    print(f"  poll of the unchanged file: {first * 1000:,.0f} ms (this version re-reads the file)")


if __name__ == "__main__":
    main()
