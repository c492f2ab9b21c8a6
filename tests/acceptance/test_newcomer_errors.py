"""First-contact mistakes, through the real `dispatch` command: each one is a single line that
names the cause and the fix, with exit code 1 (runtime) or 2 (configuration), never a
traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
FAST = {"DISPATCH_AGENT__TIME_SCALE": "0.001", "DISPATCH_RETRY__DELAY": "0.01"}
# Nothing listens on port 1: a refused connection, at once.
UNREACHABLE = "postgresql://dialer:pw-for-the-test@127.0.0.1:1/dispatch"


def dispatch(
    *args: str, cwd: Path, env: dict[str, str] | None = None, config: str = "config.toml"
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    return subprocess.run(
        [DISPATCH, *args, "-c", config],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def not_installed(tmp_path: Path, module: str) -> str:
    """A PYTHONPATH on which ``module`` is missing, as on a machine without its extra."""
    shadow = tmp_path / "shadow" / module
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n"
    )
    return str(shadow.parent)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The only line the command wrote (stdout and stderr together)."""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def edit(workdir: Path, old: str, new: str) -> None:
    config = workdir / "config.toml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


def test_an_unreachable_store_is_one_line_naming_it_and_exit_1(workdir: Path) -> None:
    result = dispatch("run", cwd=workdir, env={"DISPATCH_STORE__URL": UNREACHABLE})
    assert result.returncode == 1
    line = one_line(result)
    assert "dispatch.failed StoreUnavailable: store unreachable" in line
    assert "ConnectionRefusedError" in line
    assert "is the database running" in line
    assert "[store] url" in line
    assert "pw-for-the-test" not in line


def test_a_missing_driver_names_the_extra_to_install_and_exit_2(
    workdir: Path, tmp_path: Path
) -> None:
    env = {"DISPATCH_STORE__URL": UNREACHABLE, "PYTHONPATH": not_installed(tmp_path, "asyncpg")}
    for command in ("run", "check"):
        result = dispatch(command, cwd=workdir, env=env)
        assert result.returncode == 2, result.stderr
        assert one_line(result) == (
            "dispatch: configuration error: the PostgreSQL driver is not installed "
            "(No module named 'asyncpg'): pip install 'pinecall-dispatch[postgres]'"
        )


def test_a_store_in_a_directory_that_does_not_exist_exit_2(workdir: Path) -> None:
    edit(workdir, 'url = "sqlite:///dispatch.db"', 'url = "sqlite:///state/dispatch.db"')
    for command in ("run", "check", "db"):
        args = (command, "upgrade") if command == "db" else (command,)
        result = dispatch(*args, cwd=workdir)
        assert result.returncode == 2, result.stderr
        assert one_line(result) == (
            f"dispatch: configuration error: store.url: the directory {workdir / 'state'} for "
            "the SQLite store does not exist (create it, or point [store] url at a file in an "
            "existing directory)"
        )
    assert not (workdir / "state").exists()


def test_a_postgres_url_is_taken_for_postgresql(workdir: Path) -> None:
    unreachable = UNREACHABLE.replace("postgresql://", "postgres://")
    result = dispatch("run", cwd=workdir, env={"DISPATCH_STORE__URL": unreachable})
    assert result.returncode == 1
    assert "store unreachable" in one_line(result)  # reached for, as postgresql://


def test_a_csv_path_that_does_not_exist_fails_run_and_check_with_exit_2(workdir: Path) -> None:
    edit(workdir, 'path = "examples/leads.csv"', 'path = "examples/leeds.csv"')
    for command in ("run", "check"):
        result = dispatch(command, cwd=workdir, env=FAST)
        assert result.returncode == 2, result.stdout
        assert one_line(result) == (
            f"dispatch: configuration error: strategies[0].path: the CSV file "
            f"{workdir / 'examples' / 'leeds.csv'} does not exist (fix the path; a relative "
            f"one follows the configuration file's directory, {workdir})"
        )
    assert not (workdir / "dispatch.db").exists()  # nothing was started


def test_an_unknown_default_region_exit_2(workdir: Path) -> None:
    edit(workdir, 'default_region = "US"', 'default_region = "XX"')
    result = dispatch("check", cwd=workdir)
    assert result.returncode == 2
    assert one_line(result) == (
        "dispatch: configuration error: config.toml: default_region: unknown region 'XX' "
        "(give a country code phonenumbers knows: US, GB, FR...)"
    )


def test_a_region_in_lower_case_is_taken(workdir: Path) -> None:
    edit(workdir, 'default_region = "US"', 'default_region = "us"')
    result = dispatch("check", cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "dial  appt-001                 +14155552671" in result.stdout  # "(415) 555-2671"


def test_an_invalid_environment_override_is_blamed_on_the_variable(workdir: Path) -> None:
    result = dispatch("check", cwd=workdir, env={"DISPATCH_PACING__MAX_CONCURRENT": "-1"})
    assert result.returncode == 2
    assert one_line(result) == (
        "dispatch: configuration error: environment variable DISPATCH_PACING__MAX_CONCURRENT "
        "(sets pacing.max_concurrent): Input should be greater than or equal to 1"
    )


def test_an_environment_override_that_is_not_json_is_blamed_on_the_variable(
    workdir: Path,
) -> None:
    result = dispatch("check", cwd=workdir, env={"DISPATCH_AGENT__RING_SECONDS": "[0,"})
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("dispatch: configuration error: environment (")
    assert "DISPATCH_AGENT__RING_SECONDS" in line
    assert "JSON" in line


def test_history_into_a_reader_that_stops_early_exits_quietly(workdir: Path) -> None:
    assert dispatch("run", "--exit-when-done", cwd=workdir, env=FAST).returncode == 0
    read, write = os.pipe()
    os.close(read)  # `| head -0`: the reader is gone before the first line
    process = subprocess.Popen(
        [DISPATCH, "history", "-c", "config.toml", "--phone", "+14155552671"],
        cwd=workdir,
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write)
    _, errors = process.communicate(timeout=120)
    assert errors == ""
    assert process.returncode == 0


def test_status_and_history_say_their_times_are_utc(workdir: Path) -> None:
    assert dispatch("run", "--exit-when-done", cwd=workdir, env=FAST).returncode == 0
    status = dispatch("status", cwd=workdir).stdout.splitlines()
    assert status[1].endswith(" UTC")  # the reminders row's last poll
    history = dispatch("history", "--record", "appt-001", cwd=workdir).stdout.splitlines()
    assert history[1].count(" UTC") == 2  # dialed at, ended at


STORE_FORMS = (
    "[store] url is sqlite:///path/to/dispatch.db (relative to the configuration file; "
    "sqlite:////var/lib/... for an absolute path) or postgresql://user:password@host/db"
)


@pytest.mark.parametrize("command", ["run", "check", "status"])
def test_a_store_url_that_is_not_a_url_is_one_line_naming_the_key_and_the_right_form(
    workdir: Path, command: str
) -> None:
    edit(workdir, 'url = "sqlite:///dispatch.db"', 'url = "dispatch.db"')
    result = dispatch(command, cwd=workdir)
    assert result.returncode == 2
    assert one_line(result) == (
        f"dispatch: configuration error: config.toml: store.url: not a URL: {STORE_FORMS}"
    )


def test_a_sqlite_url_with_two_slashes_is_refused_before_anything_starts(workdir: Path) -> None:
    edit(workdir, 'url = "sqlite:///dispatch.db"', 'url = "sqlite://dispatch.db"')
    for command in ("run", "check", "status"):
        result = dispatch(command, cwd=workdir)
        assert result.returncode == 2
        assert one_line(result) == (
            "dispatch: configuration error: config.toml: store.url: sqlite://dispatch.db names "
            f"a host, not a file (two slashes where three belong): {STORE_FORMS}"
        )
    assert not (workdir / "dispatch.db").exists()


def test_a_store_url_from_the_environment_is_blamed_on_the_variable(workdir: Path) -> None:
    # A URL that does not parse is never quoted: it may hold a password.
    broken = {"DISPATCH_STORE__URL": "postgres:/dialer:pw-for-the-test@db/x"}
    for command in ("run", "check", "status"):
        result = dispatch(command, cwd=workdir, env=broken)
        assert result.returncode == 2
        assert one_line(result) == (
            "dispatch: configuration error: environment variable DISPATCH_STORE__URL (sets "
            f"store.url): not a URL: {STORE_FORMS}"
        )
    result = dispatch("check", cwd=workdir, env={"DISPATCH_STORE__URL": "mysqlx://foo"})
    assert result.returncode == 2
    assert one_line(result) == (
        "dispatch: configuration error: environment variable DISPATCH_STORE__URL (sets "
        f"store.url): unsupported store 'mysqlx': {STORE_FORMS}"
    )


def test_an_override_of_one_list_item_is_blamed_on_the_variable(workdir: Path) -> None:
    result = dispatch("check", cwd=workdir, env={"DISPATCH_STRATEGIES__0__PATH": "nope.csv"})
    assert result.returncode == 2
    assert one_line(result) == (
        "dispatch: configuration error: environment variable DISPATCH_STRATEGIES__0__PATH (sets "
        "strategies): Input should be a valid list (a list cannot be changed item by item from "
        "the environment: set the whole list as JSON in DISPATCH_STRATEGIES, or change the file)"
    )


STORE_HINT = (
    "is the database running and reachable, and is [store] url (or DISPATCH_STORE__URL) right?"
)


def test_status_and_check_on_an_unreachable_store_name_the_fix(workdir: Path) -> None:
    env = {"DISPATCH_STORE__URL": UNREACHABLE}
    status = dispatch("status", cwd=workdir, env=env)
    assert status.returncode == 1
    line = one_line(status)
    assert line.startswith("dispatch: store unreachable while reading the status (")
    assert line.endswith(f"); {STORE_HINT}")
    check = dispatch("check", cwd=workdir, env=env)
    assert check.returncode == 1
    first = check.stdout.splitlines()[0]
    assert first.startswith("FAIL store: store unreachable while migrating Store(")
    assert first.endswith(f"); {STORE_HINT}")
    assert "pw-for-the-test" not in check.stdout + status.stderr


def test_check_names_the_extra_for_a_sql_source_whose_driver_is_missing(
    workdir: Path, tmp_path: Path
) -> None:
    (workdir / "config.toml").write_text(
        '[[strategies]]\nkind = "sql"\nname = "crm"\n'
        'url = "mysql://root@127.0.0.1:3306/test"\ntable = "leads"\n'
    )
    result = dispatch("check", cwd=workdir, env={"PYTHONPATH": not_installed(tmp_path, "aiomysql")})
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "FAIL strategy crm: the MySQL/MariaDB driver is not installed (No module named "
        "'aiomysql'): pip install 'pinecall-dispatch[mysql]'"
    )
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def test_check_gives_each_part_a_deadline_that_says_what_did_not_answer(
    workdir: Path, silent_port: int
) -> None:
    (workdir / "config.toml").write_text(
        f"""
[store]
url = "postgresql://dialer:pw-for-the-test@127.0.0.1:{silent_port}/dispatch"
[agent]
kind = "pinecall"
agent_id = "dialer"
url = "ws://127.0.0.1:1"
[[strategies]]
kind = "http"
name = "crm"
url = "http://127.0.0.1:{silent_port}/leads"
"""
    )
    started = time.monotonic()
    result = dispatch("check", "--timeout", "1", cwd=workdir, env={"PINECALL_API_KEY": "pk_x"})
    assert time.monotonic() - started < 30  # not the HTTP source's 30 s timeout, 4 times
    assert result.returncode == 1
    report = [line for line in result.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert report == [
        f"FAIL store: no answer from Store('postgresql+asyncpg://dialer:***@127.0.0.1:"
        f"{silent_port}/dispatch') after 1 s ({STORE_HINT})",
        "FAIL agent: cannot connect to PinecallAgent(agent_id='dialer', url='ws://127.0.0.1:1') "
        "after 1 s (is the url right, and the platform reachable from here?)",
        "FAIL strategy crm: no answer from the source after 1 s (is it reachable from here, and "
        "answering? `dispatch run` would keep polling it)",
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_check_waits_10_s_for_each_part_unless_told(workdir: Path) -> None:
    result = subprocess.run(
        [DISPATCH, "check", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "each strategy's poll may take (default: 10)" in " ".join(result.stdout.split())


def test_a_python_strategy_beside_the_configuration_runs_from_another_directory(
    tmp_path: Path,
) -> None:
    campaign, elsewhere = tmp_path / "campaign", tmp_path / "elsewhere"
    campaign.mkdir()
    elsewhere.mkdir()
    (campaign / "my_crm.py").write_text(
        "from dispatch import Record, Strategy\n\n\n"
        "class Crm(Strategy):\n"
        "    def __init__(self, name: str = 'crm', phones: list[str] = ()) -> None:\n"
        "        super().__init__(name)\n"
        "        self.phones = list(phones)\n\n"
        "    async def poll(self) -> list[Record]:\n"
        "        return [Record(id=f'lead-{n}', phone=p) for n, p in enumerate(self.phones)]\n"
    )
    (campaign / "config.toml").write_text(
        '[store]\nurl = "sqlite:///dispatch.db"\n'
        '[agent]\nkind = "simulated"\ntime_scale = 0\nanswered = 1\nno_answer = 0\n'
        "busy = 0\nfailed = 0\n"
        '[[strategies]]\nkind = "python"\npath = "my_crm:Crm"\n'
        'options = { phones = ["+14155552671", "+14155552672"] }\n'
    )
    for command in (["check"], ["run", "--exit-when-done"]):
        result = dispatch(*command, cwd=elsewhere, config=str(campaign / "config.toml"))
        assert result.returncode == 0, result.stdout + result.stderr
    assert "dial.start strategy=crm record=lead-1 " in result.stdout
    assert (campaign / "dispatch.db").exists()  # beside the file as well, not here
    assert list(elsewhere.iterdir()) == []
