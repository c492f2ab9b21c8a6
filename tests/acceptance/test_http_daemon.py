"""`dispatch check` and `dispatch run` over a CRM's JSON API, as an operator would set it up."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_cli import FAST, dispatch, query
from tests.integration.test_http import Api, Reply, Seen, as_json

pytestmark = pytest.mark.acceptance

TOKEN = "crm-t0ken-7c1a9e"
LEADS = [
    {"id": 1, "phone": "+14155552601", "contact": {"first_name": "Ada"}},
    {"id": 2, "phone": "+14155552602", "contact": {"first_name": "Bob"}},
    {"id": 3, "phone": "not a number", "contact": {"first_name": "Cy"}},
    {"id": 4, "contact": {"first_name": "Di"}},  # no phone field: malformed
]


class Crm(Api):
    """Two pages of leads behind a bearer token; outcomes PATCHed back are kept."""

    def __init__(self, leads: list[dict[str, object]] = LEADS) -> None:
        super().__init__()
        self.list = leads
        self.outcomes: dict[str, list[str]] = {}
        self.get("/api/leads", self.leads)
        for lead in leads:
            self.on("PATCH", f"/api/leads/{lead['id']}", self.patch)

    def leads(self, seen: Seen) -> Reply:
        if seen.headers.get("authorization") != f"Bearer {TOKEN}":
            return as_json({"error": "invalid or expired token"}, 401)
        if seen.query.get("status") != "new":
            return as_json({"error": "status is required"}, 400)
        if seen.query.get("page") == "2":
            return as_json({"data": self.list[2:], "next": None})
        return as_json({"data": self.list[:2], "next": "/api/leads?status=new&page=2"})

    def patch(self, seen: Seen) -> Reply:
        self.outcomes.setdefault(seen.path.rsplit("/", 1)[1], []).append(
            seen.json()["dispatch_status"]
        )
        return as_json({"ok": True})


@pytest.fixture
def crm() -> Iterator[Crm]:
    with Crm() as server:
        yield server


def config(tmp_path: Path, url: str) -> Path:
    (tmp_path / "crm_token").write_text(TOKEN + "\n")
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
kind = "http"
name = "crm"
url = "{url}"
params = {{ status = "new" }}
greeting = "Hi {{contact.first_name}}"
retries = 1
retry_wait = 0.1
[strategies.auth]
token_file = "crm_token"
[strategies.write_back]
url = "leads/{{id}}"
call_id_field = "dispatch_call_id"
"""
    )
    return path


def test_check_then_run_dial_the_api_s_leads_and_send_outcomes_back(
    crm: Crm, tmp_path: Path
) -> None:
    config(tmp_path, f"{crm.url}/api/leads")

    # Log lines share stdout with the report: the malformed item's warning would come first.
    quiet = {"DISPATCH_LOGGING__LEVEL": "ERROR"}
    check = dispatch("check", "-c", "config.toml", "--json", cwd=tmp_path, env=quiet)
    assert check.returncode == 0, check.stderr + check.stdout
    [source] = json.loads(check.stdout)["strategies"]
    assert source["counts"] == {"dial": 2, "skip": 2}
    assert crm.outcomes == {}  # a check writes nothing back

    debug = {**FAST, "DISPATCH_LOGGING__LEVEL": "DEBUG"}  # every line there is
    run = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=tmp_path, env=debug)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "record.skipped strategy=crm record=3 reason=invalid_phone" in run.stdout
    assert "http.bad_item strategy=crm record=4 reason=missing field 'phone'" in run.stdout

    assert crm.outcomes == {
        "1": ["dispatched", "completed: hangup"],
        "2": ["dispatched", "completed: hangup"],
        "3": ["skipped: invalid_phone"],
        "4": ["skipped: malformed"],
    }
    assert query(tmp_path / "dispatch.db", "SELECT count(*) FROM attempts") == [(2,)]
    for output in (check.stdout, check.stderr, run.stdout, run.stderr):
        assert TOKEN not in output

    again = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=tmp_path, env=FAST)
    assert again.returncode == 0, again.stderr + again.stdout
    assert query(tmp_path / "dispatch.db", "SELECT count(*) FROM attempts") == [(2,)]


def test_check_json_prints_json_alone_at_the_default_log_level(tmp_path: Path) -> None:
    """httpx's request lines (INFO) stay out of the report."""
    with Crm(LEADS[:2]) as crm:  # nothing malformed: nothing to warn about
        config(tmp_path, f"{crm.url}/api/leads")
        check = dispatch("check", "-c", "config.toml", "--json", cwd=tmp_path)

    assert check.returncode == 0, check.stderr + check.stdout
    assert json.loads(check.stdout)["ok"] is True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("mistake", "line"),
    [
        (
            "port",
            "FAIL strategy crm: SourceError: GET http://127.0.0.1:{port}/api/leads: connection "
            "refused (is the server running, on that port? check url)",
        ),
        (
            "path",
            "FAIL strategy crm: SourceError: GET {url}/api/lead: 404 Not Found: no such endpoint "
            "(check the path in url)",
        ),
        (
            "token",
            "FAIL strategy crm: SourceError: GET {url}/api/leads: 401 Unauthorized: the server "
            "refused the credentials from token_file {tmp}/crm_token (invalid or expired token)",
        ),
        (
            "token file",
            "FAIL strategy crm: ConfigError: strategy crm: auth: cannot read {tmp}/crm_token: No "
            "such file or directory",
        ),
    ],
)
def test_a_first_contact_mistake_is_one_line_naming_the_cause_and_the_fix(
    crm: Crm, tmp_path: Path, mistake: str, line: str
) -> None:
    port = free_port()
    url = {"port": f"http://127.0.0.1:{port}/api/leads", "path": f"{crm.url}/api/lead"}
    config(tmp_path, url.get(mistake, f"{crm.url}/api/leads"))
    if mistake == "token":
        (tmp_path / "crm_token").write_text("an-old-token\n")
    if mistake == "token file":
        (tmp_path / "crm_token").unlink()

    check = dispatch("check", "-c", "config.toml", cwd=tmp_path)

    assert check.returncode == 1
    expected = line.format(port=port, url=crm.url, tmp=tmp_path)
    assert expected in check.stdout.splitlines(), check.stdout
    assert "Traceback" not in check.stdout + check.stderr
    assert "an-old-token" not in check.stdout + check.stderr
