"""Kill -9 the daemon at random moments of a campaign, restart it, and check the ledger.

The guarantees under test (DESIGN.md): a record never gets more than 1 + retry_attempts
dials; a terminal record is never dialed again; an attempt a crash left in flight becomes
`interrupted` and is not re-dialed; no number is ever in two calls at once.

CI runs a bounded size over a fixed list of seeds, so a failure names the seed that
reproduces it; set DISPATCH_STRESS_KILLS and DISPATCH_STRESS_SEEDS (comma-separated) for
longer or other runs.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
KILLS = int(os.environ.get("DISPATCH_STRESS_KILLS", "20"))
SEEDS = [int(s) for s in os.environ.get("DISPATCH_STRESS_SEEDS", "1729,4242").split(",")]
RECORDS, PHONES = 200, 150  # some numbers appear in two records
HOLD = 0.5  # recover_hold: a number left in a call by a killed daemon waits this long

CONFIG = """
poll_interval = 0.2
drain_timeout = 5
recover_hold = 0.5
[store]
url = "sqlite:///dispatch.db"
[pacing]
max_concurrent = 6
[retry]
attempts = 1
delay = 0.05
[logging]
level = "WARNING"
[agent]
kind = "simulated"
ring_seconds = [1, 5]
talk_seconds = [5, 30]
time_scale = 0.01
[[strategies]]
kind = "python"
path = "tests.crash_strategy:LoggedCsv"
name = "leads"
options = { path = "leads.csv", log = "callbacks.log" }
"""


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_at_random_moments_never_breaks_the_ledger(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["id,phone"] + [f"r{n:03d},+1415555{2000 + n % PHONES:04d}" for n in range(RECORDS)]
    (tmp_path / "leads.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "config.toml").write_text(CONFIG)
    db = tmp_path / "dispatch.db"
    command = [DISPATCH, "run", "-c", "config.toml", "--exit-when-done"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    killed = 0
    for run in range(KILLS):
        with (tmp_path / f"run-{run}.log").open("wb") as log:
            process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
            try:
                process.wait(timeout=rng.uniform(0.3, 1.5))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed += 1
            else:
                break  # the campaign finished between two kills
    final = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert final.returncode == 0, f"seed {seed}: {final.stdout[-2000:]}"
    context = f"seed {seed}, {killed} kills"

    # Every record has exactly one row, in a terminal state.
    states = dict(query(db, "SELECT state, count(*) FROM records GROUP BY state"))
    assert sum(states.values()) == RECORDS, context
    assert set(states) <= {"completed", "failed", "interrupted"}, (context, states)
    assert query(db, "SELECT count(*) FROM attempts WHERE state IN ('dialing', 'active')") == [(0,)]

    # No record was dialed more than 1 + retry_attempts times, and attempt numbers are dense.
    per_record = query(
        db, "SELECT record_id, count(*), max(number) FROM attempts GROUP BY record_id"
    )
    assert all(count <= 2 and count == top for _, count, top in per_record), context

    # An interrupted attempt is the record's last: nothing was dialed after a crash hit it.
    redialed = query(
        db,
        "SELECT a.record_id FROM attempts a JOIN attempts b ON a.record_id = b.record_id "
        "WHERE a.state = 'interrupted' AND b.number > a.number",
    )
    assert redialed == [], context

    # No number was in two calls at once: per phone, attempt intervals never overlap.
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for phone, start, end in query(db, "SELECT phone, dialed_at, ended_at FROM attempts"):
        spans.setdefault(str(phone), []).append(
            (datetime.fromisoformat(str(start)), datetime.fromisoformat(str(end)))
        )
    for phone, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert end <= start, f"{context}: {phone} was in two calls at once"

    # A number a killed daemon left in a call was not dialed again before the hold ran out.
    held = query(
        db,
        "SELECT a.phone, a.ended_at, b.dialed_at FROM attempts a JOIN attempts b "
        "ON a.phone = b.phone AND b.dialed_at > a.dialed_at "
        "WHERE a.state = 'interrupted' AND a.reason = 'process ended'",
    )
    for phone, ended, redialed in held:
        gap = datetime.fromisoformat(str(redialed)) - datetime.fromisoformat(str(ended))
        assert gap.total_seconds() >= HOLD, f"{context}: {phone} dialed {gap} after recovery"

    # Every terminal outcome had its callback delivered (at least once), and nothing is left
    # in the outbox.
    delivered: dict[str, set[tuple[str, str]]] = {}
    for line in (tmp_path / "callbacks.log").read_text().splitlines():
        name, record_id, *args = line.split(" ")
        delivered.setdefault(record_id, set()).add((name, args[-1]))
    for record_id, state, reason, call_id in query(
        db,
        "SELECT r.record_id, r.state, r.reason, r.call_id FROM records r",
    ):
        expected = {
            "completed": ("on_completed", reason),
            "failed": ("on_failed", reason),
            "interrupted": ("on_failed", "interrupted"),
        }[str(state)]
        assert expected in delivered.get(str(record_id), set()), (context, record_id, state)
        if state == "completed":
            assert ("on_dispatched", call_id) in delivered[str(record_id)], (context, record_id)
    assert query(db, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == [(0,)], context

    # Run again: nobody is dialed.
    attempts = query(db, "SELECT count(*) FROM attempts")
    subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    assert query(db, "SELECT count(*) FROM attempts") == attempts
    assert killed >= min(KILLS, 3), f"{context}: the campaign ended too early to test crashes"
