"""The daemon's log output: journald priorities, no secret at any level, quiet neighbours."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
from websockets.frames import Frame, Opcode

from dispatch import logs
from dispatch.config import load_settings
from dispatch.logs import configure_logging, redact, register_secrets
from dispatch.service.secrets import configured_secrets

KEY = "pk_live_" + "0123456789abcdef" * 5  # long: websockets shows a long frame shortened
A, B = "+14155552601", "+14155552602"
THIRD_PARTY = ("websockets", "watchfiles", "alembic", "sqlalchemy", "aiosqlite")


@pytest.fixture(autouse=True)
def pristine_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test configures logging from scratch, with no secret registered; put it all
    back afterwards (pytest's own capture handlers included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in (*THIRD_PARTY, "httpx", "httpcore")}
    monkeypatch.setattr(logs, "_SECRETS", logs._Secrets())
    monkeypatch.setattr(logs, "_phone_mode", "full")
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def capture(
    monkeypatch: pytest.MonkeyPatch,
    level: str = "DEBUG",
    format: str = "text",
    phone: str = "full",
) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    configure_logging(level, format, phone)  # type: ignore[arg-type]
    return out


def journal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, format: str = "text") -> TextIO:
    """stdout as systemd connects it to journald: $JOURNAL_STREAM names that very stream."""
    stream = (tmp_path / "journal").open("w+", encoding="utf-8")
    stat = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    monkeypatch.setattr(sys, "stdout", stream)
    configure_logging("DEBUG", format)  # type: ignore[arg-type]
    return stream


def written(stream: TextIO) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def test_under_journald_each_line_carries_its_syslog_priority(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = logging.getLogger("dispatch.test")
    with journal(monkeypatch, tmp_path) as stream:
        log.debug("a.debug")
        log.info("a.info x=%d", 1)
        log.warning("a.warning")
        log.error("a.error")
        log.critical("a.critical")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("a.failed")
        lines = written(stream)
    assert lines[:5] == [
        "<7>DEBUG   a.debug",
        "<6>INFO    a.info x=1",
        "<4>WARNING a.warning",
        "<3>ERROR   a.error",
        "<2>CRITICAL a.critical",
    ]
    # A traceback is filed at its record's priority, line by line: journald reads each line.
    assert lines[5] == "<3>ERROR   a.failed"
    assert lines[6:]
    assert all(line.startswith("<3>") for line in lines[6:])
    assert lines[-1] == "<3>ValueError: boom"


def test_json_lines_under_journald_carry_the_priority_before_the_object(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with journal(monkeypatch, tmp_path, "json") as stream:
        logging.getLogger("dispatch.test").warning("dial.rejected record=r1")
        [line] = written(stream)
    assert line.startswith("<4>{")
    assert json.loads(line[3:])["event"] == "dial.rejected"


def test_without_journald_lines_carry_a_time_and_no_priority(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The variable is inherited, but stdout is not the journal stream it names.
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    out = capture(monkeypatch, "INFO")
    logging.getLogger("dispatch.test").warning("a.warning")
    [line] = out.getvalue().splitlines()
    assert not line.startswith("<")
    assert line.endswith(" WARNING a.warning")


@pytest.mark.parametrize("format", ["text", "json"])
def test_no_registered_secret_reaches_a_line_at_any_level(
    monkeypatch: pytest.MonkeyPatch, format: str
) -> None:
    out = capture(monkeypatch, "DEBUG", format)
    register_secrets([KEY, "s3cr3t-pw"])
    log = logging.getLogger("dispatch.test")
    log.debug("agent.connect key=%s", KEY)
    log.info("store.url postgresql://u:s3cr3t-pw@db/x")
    log.warning("agent.frame %r", {"api_key": KEY})
    log.info("agent.extra", extra={"token": KEY})
    try:
        raise RuntimeError(f"refused {KEY}")
    except RuntimeError:
        log.exception("agent.failed")
    text = out.getvalue()
    assert KEY not in text
    assert "s3cr3t-pw" not in text
    assert text.count("***") >= 4


def test_the_websockets_connect_frame_never_shows_the_key_even_shortened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = capture(monkeypatch, "DEBUG")
    register_secrets([KEY])
    frame = Frame(Opcode.TEXT, json.dumps({"event": "connect", "api_key": KEY}).encode())
    # What the filter is up against: the frame shows the key's two ends, not the key.
    assert KEY[-20:] in str(frame)
    assert KEY not in str(frame)
    logging.getLogger("websockets.client").debug("> %s", frame)
    [line] = out.getvalue().splitlines()
    assert "websockets.client > TEXT" in line
    assert '"event": "connect"' in line
    # Not even a piece of it: no 12 characters in a row of the key.
    assert not any(KEY[i : i + 12] in line for i in range(len(KEY) - 11))


def test_a_secret_in_any_spelling_is_redacted() -> None:
    register_secrets(['p@ss/w"rd'])
    assert redact('url=postgresql://u:p%40ss%2Fw%22rd@h json="p@ss/w\\"rd"') == (
        'url=postgresql://u:***@h json="***"'
    )
    register_secrets(["abc"])  # too short to be told from ordinary text: left alone
    assert redact("abc") == "abc"


def test_third_party_loggers_say_only_warnings_at_info_and_lead_with_their_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = capture(monkeypatch, "INFO")
    for name in THIRD_PARTY:
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    logging.getLogger("watchfiles.main").info("1 change detected")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> abc")
    logging.getLogger("websockets.client").warning("connection closed")
    assert out.getvalue().splitlines()[0].endswith(" WARNING websockets.client connection closed")
    assert len(out.getvalue().splitlines()) == 1


def test_at_debug_the_wire_and_the_migrations_show(monkeypatch: pytest.MonkeyPatch) -> None:
    capture(monkeypatch, "DEBUG", "json")
    assert logging.getLogger("websockets").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("sqlalchemy").getEffectiveLevel() == logging.WARNING


def test_every_secret_the_configuration_holds_is_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "leads.csv").write_text("id,phone\n")
    (tmp_path / "crm_password").write_text("crm-password\n")
    (tmp_path / "hook").write_text("whsec_c2VjcmV0LXNpZ25pbmcta2V5\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "crm_token").write_text("token-from-credential")
    (tmp_path / "config.toml").write_text(
        """
[store]
url = "postgresql://dialer:store-password@db/dispatch"
[agent]
kind = "pinecall"
agent_id = "dialer"
api_key = "inline-api-key"
config = { voice = "alloy", token = "free-form-token" }
[[strategies]]
kind = "sql"
url = "postgresql://crm@db/crm"
password_file = "crm_password"
table = "leads"
[[strategies]]
kind = "http"
url = "https://crm.example/leads"
auth = { token_env = "CRM_TOKEN" }
[[webhooks]]
url = "https://hooks.example/in"
secret_file = "hook"
"""
    )
    settings = load_settings(tmp_path / "config.toml")
    environ = {
        "CRM_TOKEN": "token-from-env",
        "PINECALL_API_KEY": "env-api-key",
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    assert configured_secrets(settings, tmp_path, environ) == {
        "store-password",
        "inline-api-key",
        "crm-password",
        "token-from-env",
        "whsec_c2VjcmV0LXNpZ25pbmcta2V5",
        "env-api-key",
        "token-from-credential",
        "free-form-token",
    }


def test_json_lines_carry_the_message_fields_as_keys_with_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = capture(monkeypatch, "INFO", "json")
    register_secrets([KEY])  # the fields go through the secret filter too
    log = logging.getLogger("dispatch.attempts")
    log.info("dial.start strategy=%s record=%s phone=%s attempt=%d/%d", "leads", "r 1", A, 1, 2)
    log.warning("call.ended record=%s call_id=%s reason=%s: %s", "r1", "c-9", "busy", "detail")
    log.info("100%% done token=%s", KEY, extra={"queue": 3})
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "dial.start"
    assert {k: first[k] for k in ("strategy", "record", "phone", "attempt")} == {
        "strategy": "leads",
        "record": "r 1",  # a value with a space is whole, as given
        "phone": A,
        "attempt": 1,  # numbers stay numbers
    }
    assert first["message"] == f"dial.start strategy=leads record=r 1 phone={A} attempt=1/2"
    assert (second["call_id"], second["reason"], second["level"]) == ("c-9", "busy", "WARNING")
    assert (third["token"], third["queue"]) == ("***", 3)


@pytest.mark.parametrize("format", ["text", "json"])
def test_phone_last4_masks_numbers_in_every_line(
    monkeypatch: pytest.MonkeyPatch, format: str
) -> None:
    out = capture(monkeypatch, "INFO", format, phone="last4")
    log = logging.getLogger("dispatch.attempts")
    log.info("dial.start record=%s phone=%s", "r1", A)
    log.warning("record.skipped record=%s phone=%s reason=invalid_phone", "r2", "(415) 555-01")
    log.info("dnc.added %s and +33612345678 in the text", B)
    text = out.getvalue()
    assert A not in text
    assert B not in text
    assert "+33612345678" not in text
    assert "+*******2601" in text
    assert "+*******2602" in text
    assert "+*******5678" in text
    if format == "json":
        first, second, _ = (json.loads(line) for line in text.splitlines())
        assert first["phone"] == "+*******2601"
        assert second["phone"].endswith("5-01")
        assert "555" not in second["phone"]
    assert "record=r1" in text  # the rest is left alone


def test_phone_full_leaves_numbers_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    out = capture(monkeypatch, "INFO")
    logging.getLogger("dispatch.attempts").info("dial.start phone=%s", A)
    assert out.getvalue().rstrip().endswith(f"dial.start phone={A}")


def test_a_secret_inside_a_non_string_value_never_reaches_a_json_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = capture(monkeypatch, "INFO", "json")
    register_secrets([KEY])
    log = logging.getLogger("dispatch.store")

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    log.error("store.failed error=%s parts=%s", RuntimeError(f"token={KEY}"), [KEY])
    log.info("agent.sent", extra={"headers": {"authorization": KEY}, "odd": Broken()})
    log.info("agent.odd value=%s", Broken())  # a broken __str__ does not raise from here
    text = out.getvalue()
    assert KEY not in text
    first, second, _ = (json.loads(line) for line in text.splitlines())
    assert first["error"] == "token=***"
    assert second["headers"] == "{'authorization': '***'}"
    assert second["odd"] == "<Broken>"


def test_extra_fields_cannot_switch_the_filter_off(monkeypatch: pytest.MonkeyPatch) -> None:
    out = capture(monkeypatch, "INFO", "json")
    register_secrets([KEY])
    logging.getLogger("dispatch.x").info("a.b key=%s", KEY, extra={logs.FIELDS: {}})
    assert KEY not in out.getvalue()
