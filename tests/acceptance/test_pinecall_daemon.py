"""`dispatch run` with `[agent] kind = "pinecall"` against the fake Pinecall server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from dispatch.pinecall_fake import ToolCall
from dispatch.testing import Answer, FakePinecall

pytestmark = [pytest.mark.acceptance, pytest.mark.anyio]

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
A, B, C = "+14155552601", "+14155552602", "+14155552603"


def config(url: str) -> str:
    return f"""
poll_interval = 3600
[store]
url = "sqlite:///dispatch.db"
[retry]
attempts = 0
[agent]
kind = "pinecall"
url = "{url}"
agent_id = "dialer"
phone_numbers = ["+13185550100"]
voice = "alloy"
prompt = "You are Pine."
[[strategies]]
kind = "csv"
path = "leads.csv"
watch = false
greeting = "Hi {{name}}"
"""


async def run_daemon(workdir: Path, api_key: str) -> tuple[int, str]:
    env = {**os.environ, "PINECALL_API_KEY": api_key}
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [DISPATCH, "run", "-c", "config.toml", "--exit-when-done"],
            cwd=workdir,
            env=env,
            check=False,
            stderr=subprocess.STDOUT,
        )
    return result.returncode, result.stdout.decode()


async def test_the_daemon_runs_a_small_campaign_through_pinecall(tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_text(f"id,phone,name\nr1,{A},Ada\nr2,{B},Bob\nr3,{C},Cy\n")
    script = {A: [Answer(ring=0.01, talk=0.05)], B: ["busy"], C: ["no-answer"]}
    async with FakePinecall(script=script) as fake:
        (tmp_path / "config.toml").write_text(config(fake.url))
        code, output = await run_daemon(tmp_path, fake.api_key)
    assert code == 0, output
    with sqlite3.connect(tmp_path / "dispatch.db") as db:
        rows = db.execute("SELECT record_id, state, reason FROM attempts ORDER BY record_id")
        assert rows.fetchall() == [
            ("r1", "completed", "hangup"),
            ("r2", "rejected", "busy"),
            ("r3", "rejected", "no_answer"),
        ]
    dials = {r.frame["to"]: r.frame for r in fake.received("call.dial")}
    assert sorted(dials) == [A, B, C]
    assert dials[A]["greeting"] == "Hi Ada"
    assert fake.received("agent.create")[0].frame["prompt"] == "You are Pine."
    assert fake.api_key not in output


RESULTS = """
vars = { company = "Pine Dental" }
detect_turn_end = true
[[agent.tools]]
name = "confirm_appointment"
description = "Whether the callee keeps the appointment."
[agent.tools.parameters]
type = "object"
required = ["status"]
[agent.tools.parameters.properties.status]
enum = ["confirmed", "cancelled"]
"""


async def test_the_daemon_registers_result_tools_and_records_the_callees_answer(
    tmp_path: Path,
) -> None:
    (tmp_path / "leads.csv").write_text(f"id,phone,name\nr1,{A},Ada\n")
    toml = config("URL").replace('prompt = "You are Pine."', f'prompt = "You are Pine."{RESULTS}')
    toml += 'prompt_vars = { name = "{name}" }\n'
    answers = [
        ToolCall("confirm_appointment", '{"status": "maybe"}', msg_id="m1"),
        ToolCall("confirm_appointment", {"status": "confirmed"}, msg_id="m2", times=2),
    ]
    script = {A: [Answer(ring=0.01, talk=0.05, tool_calls=answers, messages=[{"role": "user"}])]}
    async with FakePinecall(script=script) as fake:
        (tmp_path / "config.toml").write_text(toml.replace("URL", fake.url))
        code, output = await run_daemon(tmp_path, fake.api_key)
    assert code == 0, output
    with sqlite3.connect(tmp_path / "dispatch.db") as db:
        row = db.execute("SELECT state, call_id, results, transcript FROM attempts").fetchone()
    state, call_id, results, transcript = row
    assert state == "completed"
    assert [(r["tool"], r["arguments"]) for r in json.loads(results)] == [
        ("confirm_appointment", {"status": "confirmed"})
    ]
    assert json.loads(transcript) == [{"role": "user"}]
    create = fake.received("agent.create")[0].frame
    assert create["vars"] == {"company": "Pine Dental"}
    assert [t["function"]["name"] for t in create["tools"]] == ["confirm_appointment"]
    (dial,) = (r.frame for r in fake.received("call.dial"))
    assert dial["detect_turn_end"] is True
    assert "config" not in dial
    (set_vars,) = (r.frame for r in fake.received("history.set_vars"))
    assert (set_vars["call_id"], set_vars["vars"]) == (call_id, {"name": "Ada"})
    assert [r["msg_id"] for r in fake.tool_results] == ["m1", "m2"]
    assert fake.refusals == []
    assert "pinecall.tool_call_invalid" in output


async def test_a_refused_key_stops_the_daemon_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_text(f"id,phone\nr1,{A}\n")
    async with FakePinecall() as fake:
        (tmp_path / "config.toml").write_text(config(fake.url))
        code, output = await run_daemon(tmp_path, "pk_wrong_key")
    assert code == 1
    assert "dispatch.failed PinecallFatal: API key refused" in output
    assert "pk_wrong_key" not in output
    assert fake.received("call.dial") == []


async def test_check_reports_a_registration_refusal(tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_text(f"id,phone,name\nr1,{A},Ada\nr2,12,Bob\n")
    refusal = {"code": "PHONE_IN_USE", "error": "in use", "phone": "+13185550100"}
    conflict = {"code": "AGENT_CONFLICT_FATAL", "error": "owned by another org"}
    async with FakePinecall(registration_errors=[conflict, refusal]) as fake:
        (tmp_path / "config.toml").write_text(config(fake.url))
        env = {**os.environ, "PINECALL_API_KEY": fake.api_key}
        with anyio.fail_after(60):
            result = await anyio.run_process(
                [DISPATCH, "check", "-c", "config.toml"], cwd=tmp_path, env=env, check=False
            )
    output = result.stdout.decode()
    assert result.returncode == 1, output
    assert "FAIL agent: PinecallFatal: registration of agent dialer refused" in output
    assert "AGENT_CONFLICT_FATAL" in output
    assert "ok   strategy leads: one poll: dial 1, skip 1" in output
    assert "skip  r2" in output
    assert "invalid_phone" in output
    assert fake.received("call.dial") == []


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        # The first place that holds a key is the one used, right or wrong: no fallback.
        ({"api_key": "right", "api_key_file": "wrong"}, True),
        ({"api_key_file": "right", "env": "wrong", "credential": "wrong"}, True),
        ({"api_key_file": "wrong", "env": "right", "credential": "right"}, False),
        ({"env": "right", "credential": "wrong"}, True),
        ({"env": "wrong", "credential": "right"}, False),
        ({"credential": "right"}, True),
        # A DISPATCH_ variable overrides the file's key, like any other key.
        ({"api_key_file": "wrong", "override_file": "right", "env": "wrong"}, True),
    ],
)
async def test_the_api_key_is_taken_in_the_documented_order(
    tmp_path: Path, given: dict[str, str], taken: bool
) -> None:
    (tmp_path / "leads.csv").write_text(f"id,phone\nr1,{A}\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    async with FakePinecall() as fake:
        keys = {"right": fake.api_key, "wrong": "pk_wrong_key"}
        agent = ['agent_id = "dialer"']  # the lines of [agent]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PINECALL_", "DISPATCH_"))}
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
        for place, which in given.items():
            key_file = tmp_path / f"{place}.key"
            key_file.write_text(keys[which] + "\n")
            if place == "api_key":
                agent.append(f'api_key = "{keys[which]}"')
            elif place == "api_key_file":
                agent.append(f'api_key_file = "{key_file.name}"')
            elif place == "override_file":
                env["DISPATCH_AGENT__API_KEY_FILE"] = str(key_file)
            elif place == "env":
                env["PINECALL_API_KEY"] = keys[which]
            else:
                (credentials / "pinecall_api_key").write_text(keys[which])
        text = config(fake.url).replace(agent[0], "\n".join(agent))
        (tmp_path / "config.toml").write_text(text)
        with anyio.fail_after(60):
            result = await anyio.run_process(
                [DISPATCH, "check", "-c", "config.toml"], cwd=tmp_path, env=env, check=False
            )
    output = result.stdout.decode()
    assert "pk_wrong_key" not in output
    if taken:
        assert result.returncode == 0, output
        assert "ok   agent: PinecallAgent(" in output
    else:
        assert result.returncode == 1, output
        assert "FAIL agent: PinecallFatal: API key refused" in output
