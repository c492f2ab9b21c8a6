"""The fake Pinecall in a process of its own (``python -m tests.fake_platform OUT RING TALK``),
for tests that load the machine: its event loop does nothing else, so the time it stamps a
frame with is when the frame came, whatever the test process is busy with.

It prints ``{"url": ..., "api_key": ...}`` once listening, then one line per ``call.dial``
received: ``{"connection": n, "at": t, "id": record id, "dispatch_id": attempt id}``. When its
standard input closes it writes every frame it received and sent to ``OUT`` (JSON: lists of
``[connection, frame, at]``) and exits. Times are the fake's monotonic clock, one for all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

from dispatch.pinecall_fake import Received
from dispatch.testing import Answer, FakePinecall


def _line(data: object) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def _serve(out: Path, ring: float, talk: float) -> None:
    async with FakePinecall(default=Answer(ring=ring, talk=talk)) as fake:
        _line({"url": fake.url, "api_key": fake.api_key})

        async def report() -> None:
            read = 0
            while True:
                # Each new frame looked at once (the transcript grows by thousands).
                await fake.wait_until(lambda: len(fake.transcript) > read)  # noqa: B023 - awaited here
                for r in fake.transcript[read:]:
                    if r.event == "call.dial":
                        metadata = r.frame.get("metadata", {})
                        _line({"connection": r.connection, "at": r.at, "id": metadata.get("id"),
                               "dispatch_id": metadata.get("dispatch_id")})  # fmt: skip
                read = len(fake.transcript)

        async with anyio.create_task_group() as tg:
            tg.start_soon(report)
            # Until the test closes our standard input.
            await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            tg.cancel_scope.cancel()

        def rows(frames: list[Received]) -> list[list[object]]:
            return [[r.connection, r.frame, r.at] for r in frames]

        out.write_text(json.dumps({"received": rows(fake.transcript), "sent": rows(fake.sent)}))


if __name__ == "__main__":
    anyio.run(_serve, Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
