"""Limiter exactness and utilisation under saturation, on real time with a short window.

python -m bench.limiter --limit 50 --window 0.5 --seconds 5
"""

from __future__ import annotations

import argparse

import anyio

from dispatch.pacing import SlidingWindowLimiter
from dispatch.testing import max_in_any_window


async def saturate(limit: int, window: float, seconds: float) -> list[float]:
    limiter = SlidingWindowLimiter(limit, window)
    starts: list[float] = []

    async def caller() -> None:
        while True:
            reservation = await limiter.acquire()
            starts.append(await limiter.start(reservation))  # as the hub: at the commit

    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as tg:
            for _ in range(limit * 2):  # demand always exceeds the limit
                tg.start_soon(caller)
    return starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--window", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    starts = anyio.run(saturate, args.limit, args.window, args.seconds)
    span = starts[-1] - starts[0]
    possible = (int(span / args.window) + 1) * args.limit
    print(f"limiter: limit {args.limit} per {args.window}s window, saturated for {args.seconds}s")
    print(
        f"  dial starts: {len(starts)}; max in any window: "
        f"{max_in_any_window(starts, args.window)} (limit {args.limit})"
    )
    print(f"  utilisation: {len(starts) / possible:.2%} of the allowed rate")


if __name__ == "__main__":
    main()
