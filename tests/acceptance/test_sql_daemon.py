"""`dispatch check` and `dispatch run` over a PostgreSQL table, as an operator would set it up."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.acceptance.test_cli import FAST, dispatch, query

pytestmark = [pytest.mark.acceptance, pytest.mark.anyio]

TABLE = """
CREATE TABLE leads (
    id serial PRIMARY KEY,
    phone text,
    first_name text,
    status text NOT NULL DEFAULT 'new',
    call_after timestamptz,
    dispatch_status varchar(40),
    dispatch_call_id text,
    dispatch_at timestamptz
)
"""
ROWS = [
    ("+14155552601", "Ada", "new", None),
    ("+14155552602", "Bob", "new", "2020-01-01T00:00:00Z"),
    ("not a number", "Cy", "new", None),
    ("+14155552604", "Di", "opted_out", None),
    ("+14155552605", "Ed", "new", "2099-01-01T00:00:00Z"),
]


def config(tmp_path: Path, url: str) -> Path:
    (tmp_path / "crm_password").write_text("s3cret-pw\n")
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
default_region = "US"
poll_interval = 0.2
[store]
url = "sqlite:///dispatch.db"
[agent]
kind = "simulated"
answered = 1.0
no_answer = 0.0
busy = 0.0
failed = 0.0
[[strategies]]
kind = "sql"
name = "crm"
url = "{url}"
password_file = "crm_password"
table = "leads"
where = "status = 'new'"
due_column = "call_after"
greeting = "Hi {{first_name}}"
[strategies.write_back]
call_id_column = "dispatch_call_id"
time_column = "dispatch_at"
"""
    )
    return path


async def make_table(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://", 1))
    await conn.execute(TABLE)
    await conn.executemany(
        "INSERT INTO leads (phone, first_name, status, call_after)"
        " VALUES ($1, $2, $3, $4::text::timestamptz)",
        ROWS,
    )
    return conn


async def test_check_then_run_dial_the_due_rows_and_write_outcomes_back(
    postgres_url: str, tmp_path: Path
) -> None:
    config(tmp_path, postgres_url)
    conn = await make_table(postgres_url)
    try:
        check = dispatch("check", "-c", "config.toml", "--json", cwd=tmp_path)
        assert check.returncode == 0, check.stderr + check.stdout
        [crm] = json.loads(check.stdout)["strategies"]
        assert crm["counts"] == {"dial": 2, "skip": 1}
        assert "s3cret" not in check.stdout + check.stderr

        run = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=tmp_path, env=FAST)
        assert run.returncode == 0, run.stderr + run.stdout
        assert "record.skipped strategy=crm record=3 reason=invalid_phone" in run.stdout
        assert "s3cret" not in run.stdout + run.stderr

        rows = await conn.fetch("SELECT id, dispatch_status FROM leads ORDER BY id")
        assert [tuple(r) for r in rows] == [
            (1, "completed: hangup"),
            (2, "completed: hangup"),
            (3, "skipped: invalid_phone"),
            (4, None),  # opted out: not in the campaign
            (5, None),  # due in 2099
        ]
        assert query(tmp_path / "dispatch.db", "SELECT count(*) FROM attempts") == [(2,)]
    finally:
        await conn.close()


async def test_a_missing_column_stops_the_run_with_a_clear_error(
    postgres_url: str, tmp_path: Path
) -> None:
    path = config(tmp_path, postgres_url)
    path.write_text(path.read_text().replace('"Hi {first_name}"', '"Hi {firstname}"'))
    conn = await make_table(postgres_url)
    await conn.close()

    run = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=tmp_path, env=FAST)

    assert run.returncode == 1
    assert "ConfigError: strategy crm: table 'leads' has no column 'firstname'" in run.stdout
