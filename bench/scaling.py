"""Scaling: the hub's CPU per record at several campaign sizes, each in a fresh process.

``bench.hub_throughput.through_hub`` (instant agent, no rate limit, a fresh SQLite file) per
size; a flat CPU per record means no cost grows with the campaign. A run on no records gives
the fixed cost (opening and migrating the store, closing it); the last column leaves it out.

    python -m bench.scaling                                  # 10,000 and 30,000 records
    python -m bench.scaling --sizes 10000 100000 300000      # the full figure
    python -m bench.scaling --sizes 10000 100000 --runs 3    # medians of 3 per size
"""

from __future__ import annotations

import argparse
import logging
import statistics

from bench._runs import child, spread


def run_one(count: int, concurrency: int) -> None:
    import anyio

    from bench.hub_throughput import fresh, through_hub

    logging.disable(logging.WARNING)
    wall, cpu = anyio.run(fresh, through_hub, False, count, concurrency)
    print(f"{wall:.6f} {cpu:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000])
    parser.add_argument("--runs", type=int, default=1, help="fresh processes per size")
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument("--one", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        run_one(args.one, args.concurrency)
        return

    def measure(size: int) -> tuple[float, float]:
        fields = child("bench.scaling", "--one", size, "--concurrency", args.concurrency)
        return float(fields[0]), float(fields[1])

    sizes = sorted({s for s in args.sizes if s > 0})
    fixed = statistics.median(measure(0)[1] for _ in range(args.runs))
    print(
        f"hub scaling: instant agent, concurrency {args.concurrency}, fresh SQLite file and "
        f"process per run, {args.runs} run(s) per size; fixed cost {fixed * 1000:.0f} ms CPU"
    )
    print(f"{'records':>10}{'records/s':>26}{'CPU us/record':>22}{'less fixed cost':>20}")
    gross, net = [], []
    for size in sizes:
        runs = [measure(size) for _ in range(args.runs)]
        rates = [size / wall for wall, _ in runs]
        cpus = [cpu / size * 1e6 for _, cpu in runs]
        gross.append(statistics.median(cpus))
        net.append(gross[-1] - fixed / size * 1e6)
        print(f"{size:>10,}{spread(rates):>26}{spread(cpus):>22}{net[-1]:>20,.0f}")
    if len(sizes) > 1:
        print(
            f"CPU per record, {sizes[0]:,} -> {sizes[-1]:,} records: "
            f"{(gross[-1] / gross[0] - 1) * 100:+.1f} % ({gross[0]:.0f} -> {gross[-1]:.0f} us); "
            f"less the fixed cost {(net[-1] / net[0] - 1) * 100:+.1f} %"
        )


if __name__ == "__main__":
    main()
