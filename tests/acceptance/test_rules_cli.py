"""The calling rules seen from the command line: records outside their calling hours wait,
and `dispatch status` says what they wait for."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.acceptance.test_pause_cli import Running, control

pytestmark = pytest.mark.acceptance


def test_records_outside_their_hours_wait_and_status_counts_them_by_reason(
    workdir: Path,
) -> None:
    # A window that opens two hours from now (UTC, the records' zone): nobody is called yet.
    opens = datetime.now(UTC) + timedelta(hours=2)
    window = f'{{ days = "mon-sun", from = "{opens:%H}:00", to = "{opens:%H}:59" }}'
    config = workdir / "config.toml"
    text = config.read_text().replace(
        'phone = "{phone}"\n', 'phone = "{phone}"\ntimezone = "UTC"\n'
    )
    config.write_text(text + f"[strategies.calling_hours]\nwindows = [{window}]\n")
    with Running(workdir, {}) as daemon:
        daemon.wait_for(r"record\.held .*why=outside hours until ", count=11)
    assert daemon.process.returncode == 0, daemon.output
    assert daemon.count(r"dial\.start ") == 0
    report = json.loads(control("status", "--json", cwd=workdir))
    reminders = report["strategies"]["reminders"]
    assert reminders["waiting"] == 11  # twelve rows, one of them skipped (invalid phone)
    assert reminders["waiting_reasons"] == {"outside hours": 11}
    table = control("status", cwd=workdir)
    assert "reminders: waiting for: outside hours 11" in table
