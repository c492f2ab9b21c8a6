from __future__ import annotations

from pathlib import Path

import pytest

from dispatch import ConfigError, DispatchHub, Record
from dispatch.config import build_hub, load_settings, store_url
from strategies import CsvStrategy, SqlStrategy, WriteBack

MINIMAL = """
[[strategies]]
kind = "csv"
path = "leads.csv"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_example_configuration_builds_a_hub(repo_root: Path) -> None:
    settings = load_settings(repo_root / "config.example.toml")
    hub = build_hub(settings, base=repo_root)
    assert isinstance(hub, DispatchHub)
    assert hub.pacing.max_concurrent == settings.pacing.max_concurrent
    assert hub.from_ == "+14155550100"
    assert str(hub.store.url).endswith(str(repo_root / "dispatch.db"))


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[pacing]\nmax_concurent = 3\n" + MINIMAL)
    with pytest.raises(ConfigError, match=r"pacing\.max_concurent: unknown key"):
        load_settings(path)


def test_a_bad_value_names_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[pacing]\nmax_concurrent = 0\n" + MINIMAL)
    with pytest.raises(ConfigError, match=r"pacing\.max_concurrent: Input should be greater"):
        load_settings(path)


def test_a_bad_strategy_key_names_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, '[[strategies]]\nkind = "csv"\n')
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.path: Field required"):
        load_settings(path)


def test_invalid_toml_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[pacing\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "absent.toml")


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_PACING__MAX_CONCURRENT", "7")
    monkeypatch.setenv("DISPATCH_POLL_INTERVAL", "0.5")
    settings = load_settings(write(tmp_path, "[pacing]\nmax_concurrent = 2\n" + MINIMAL))
    assert settings.pacing.max_concurrent == 7
    assert settings.poll_interval == 0.5


def test_the_environment_overrides_the_default_agent_without_an_agent_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_AGENT__TIME_SCALE", "0.01")
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.agent.kind == "simulated"
    assert settings.agent.time_scale == 0.01  # type: ignore[union-attr]


def test_relative_paths_are_resolved_against_the_config_directory(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    assert store_url(settings, tmp_path) == f"sqlite:///{tmp_path / 'dispatch.db'}"
    hub = build_hub(settings, base=tmp_path)
    [strategy] = hub._sources
    assert strategy.strategy.path == tmp_path / "leads.csv"  # type: ignore[attr-defined]


def test_callback_options_reach_the_outbox(tmp_path: Path) -> None:
    text = MINIMAL + "\n[callbacks]\ntimeout = 5\nconcurrency = 7\n"
    hub = build_hub(load_settings(write(tmp_path, text)), base=tmp_path)
    assert (hub._outbox.timeout, hub._outbox.concurrency) == (5.0, 7)
    with pytest.raises(ConfigError, match="concurrency"):
        load_settings(write(tmp_path, MINIMAL + "\n[callbacks]\nconcurrency = 0\n"))


def test_a_python_strategy_is_loaded_by_import_path(tmp_path: Path) -> None:
    text = '[[strategies]]\nkind = "python"\npath = "tests.support:ListStrategy"\nname = "crm"\n'
    hub = build_hub(load_settings(write(tmp_path, text)), base=tmp_path)
    assert hub._sources[0].name == "crm"
    broken = '[[strategies]]\nkind = "python"\npath = "tests.support:Missing"\n'
    with pytest.raises(ConfigError, match=r"cannot import 'tests\.support:Missing'"):
        build_hub(load_settings(write(tmp_path, broken)), base=tmp_path)


def test_the_default_caller_id_has_a_prefixed_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'from = "+14155550100"\n' + MINIMAL)
    monkeypatch.setenv("from", "+19999999999")  # an unrelated variable must not leak in
    assert load_settings(path).from_ == "+14155550100"
    monkeypatch.setenv("DISPATCH_FROM_", "+14155550199")
    assert load_settings(path).from_ == "+14155550199"


@pytest.mark.anyio
async def test_the_live_csv_options_reach_the_strategy(tmp_path: Path) -> None:
    text = MINIMAL + (
        'delimiter = ";"\nwatch = false\nsettle = 0.5\nrescan_interval = 60\n'
        'results_path = "out/results.csv"\n'
        '[strategies.skip_if]\ndo_not_call = ["yes"]\n'
        '[strategies.write_back]\nstatus_column = "Status"\ncall_id_column = "Call"\n'
    )
    hub = build_hub(load_settings(write(tmp_path, text)), base=tmp_path)
    strategy = hub._sources[0].strategy
    assert isinstance(strategy, CsvStrategy)
    assert strategy.write_back == WriteBack(status_column="Status", call_id_column="Call")
    assert (strategy.file.delimiter, strategy.watching, strategy.file.settle) == (";", False, 0.5)
    assert strategy.rescan_interval == 60
    (tmp_path / "leads.csv").write_text(
        "id;phone;Do Not Call\nr1;+14155552671;yes\nr2;+14155552672;\n"
    )
    assert [r.id for r in await strategy.poll()] == ["r2"]
    (tmp_path / "out").mkdir()
    await strategy.deliver("on_failed", Record(id="r2", phone="+1"), "busy")
    assert "failed: busy" in (tmp_path / "out" / "results.csv").read_text()
    assert "Status;Call" in (tmp_path / "leads.csv").read_text()


PINECALL = (
    """
[agent]
kind = "pinecall"
agent_id = "dialer"
phone_numbers = ["+13185550100"]
voice = "alloy"
"""
    + MINIMAL
)


def test_the_pinecall_key_comes_from_the_environment_a_file_or_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatch.agents.pinecall import PinecallAgent

    monkeypatch.delenv("PINECALL_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    settings = load_settings(write(tmp_path, PINECALL))
    with pytest.raises(ConfigError, match="no Pinecall API key"):
        build_hub(settings, base=tmp_path)

    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "pinecall_api_key").write_text("pk_from_systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    agent = build_hub(settings, base=tmp_path).agent
    assert isinstance(agent, PinecallAgent)
    assert agent._api_key == "pk_from_systemd"
    assert agent.config == {"voice": "alloy"}
    assert "pk_" not in repr(agent)

    monkeypatch.setenv("PINECALL_API_KEY", "pk_from_env")
    assert build_hub(settings, base=tmp_path).agent._api_key == "pk_from_env"  # type: ignore[attr-defined]


def test_a_sql_strategy_takes_its_password_from_a_file_and_never_shows_it(tmp_path: Path) -> None:
    (tmp_path / "crm_password").write_text("hunter2\n")
    text = """
[[strategies]]
kind = "sql"
url = "postgresql://dialer@db.example/crm"
password_file = "crm_password"
table = "sales.leads"
where = "status = 'new'"
due_column = "call_after"
greeting = "Hi {first_name}"
fetch_size = 100
[strategies.write_back]
call_id_column = "call_id"
"""
    hub = build_hub(load_settings(write(tmp_path, text)), base=tmp_path)
    strategy = hub._sources[0].strategy
    assert isinstance(strategy, SqlStrategy)
    assert strategy.url.password == "hunter2"
    assert (strategy.name, strategy.table, strategy.where) == (
        "leads",
        "sales.leads",
        "status = 'new'",
    )
    assert (strategy.due_column, strategy.fetch_size) == ("call_after", 100)
    assert strategy.write_back == WriteBack(call_id_column="call_id")
    assert strategy.templates.greeting == "Hi {first_name}"
    assert "hunter2" not in repr(strategy)

    (tmp_path / "crm_password").unlink()
    with pytest.raises(ConfigError, match="password_file: cannot read"):
        build_hub(load_settings(write(tmp_path, text)), base=tmp_path)


def test_a_sqlite_source_is_found_beside_the_configuration(tmp_path: Path) -> None:
    text = '[[strategies]]\nkind = "sql"\nurl = "sqlite:///crm.db"\ntable = "leads"\n'
    strategy = build_hub(load_settings(write(tmp_path, text)), base=tmp_path)._sources[0].strategy
    assert isinstance(strategy, SqlStrategy)
    assert strategy.url.database == str(tmp_path / "crm.db")


RULES = """
[caps]
per_24h = 3
per_30d = 4
min_gap = "4h"

[retry]
attempts = 1
delay = "30s"
[retry.busy]
attempts = 2
delay = "10m"
[retry.no_answer]
attempts = 1
delay = "2h"
[retry.failed]
attempts = 0

[pacing]
max_calls_per_second = 2.5

[[strategies]]
kind = "csv"
path = "leads.csv"
schedule = "0 9-17 * * mon-fri"
schedule_timezone = "Europe/Paris"
active = { from = "2026-12-01", until = "2026-12-24" }
opt_out_reasons = ["opted_out"]
[strategies.calling_hours]
rules = "fr"
[strategies.caps]
per_24h = 1
cooldown_after_refusal = "60d"
[[strategies.result_actions]]
when = { status = "stop" }
action = "opt_out"

[[strategies]]
kind = "csv"
name = "inline"
path = "leads.csv"
[strategies.calling_hours]
windows = [{ days = "mon-fri", from = "09:00", to = "18:00" }]
holidays = "US-FL"
timezone = "America/New_York"
"""


def test_calling_rules_caps_retries_and_schedules_come_from_the_file(tmp_path: Path) -> None:
    from datetime import date

    from dispatch import ActionKind
    from dispatch.options import RetryRule
    from dispatch.rules.caps import Caps

    hub = build_hub(load_settings(write(tmp_path, RULES)), base=tmp_path)
    assert hub.caps == Caps(per_24h=3, per_30d=4, min_gap=4 * 3600)
    assert hub.retry.by_reason == {
        "busy": RetryRule(2, 600.0),
        "no_answer": RetryRule(1, 7200.0),
        "failed": RetryRule(0, 30.0),  # no more tries after a failure; its delay the default
    }
    assert (hub.retry.attempts, hub.retry.delay, hub.retry.max_dials) == (1, 30.0, 4)
    assert hub.pacing.max_calls_per_second == 2.5
    leads = hub.calling_rules("leads")
    assert leads.pack is not None
    assert leads.pack.name == "fr"
    # The hub's caps, the fr pack's (4 in 30 days, 60 days after a refusal), the strategy's.
    assert leads.caps == Caps(per_24h=1, per_30d=4, min_gap=4 * 3600,
                              cooldown_after_refusal=60 * 86400)  # fmt: skip
    assert leads.opt_out_reasons == frozenset({"opted_out"})
    assert leads.schedule is not None
    assert (leads.schedule.active_from, leads.schedule.active_until) == (
        date(2026, 12, 1),
        date(2026, 12, 24),
    )
    [action] = hub.strategies[0].result_actions
    assert action.action is ActionKind.OPT_OUT
    inline = hub.calling_rules("inline")
    assert inline.pack is not None
    assert inline.pack.name == "custom"
    assert [z.key for z in inline.pack.fallback_zones] == ["America/New_York"]


@pytest.mark.parametrize(
    ("snippet", "match"),
    [
        ('[strategies.calling_hours]\nrules = "mars"\n', "unknown rule pack 'mars'"),
        (
            '[strategies.calling_hours]\nwindows = [{ days = "someday", from = "9", to = "5" }]\n',
            r"strategies\.calling_hours: windows\[0\]",
        ),
        ('schedule = "every day"\n', "invalid cron schedule"),
        ('[strategies.caps]\nmin_gap = "4 hours"\n', "invalid duration '4 hours'"),
    ],
)
def test_a_bad_calling_rule_is_one_line_naming_it(tmp_path: Path, snippet: str, match: str) -> None:
    path = write(tmp_path, MINIMAL + snippet)
    with pytest.raises(ConfigError, match=match):
        build_hub(load_settings(path), base=tmp_path)


def test_webhooks_take_their_secret_from_a_file_and_never_show_it(tmp_path: Path) -> None:
    import base64

    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    (tmp_path / "hook.secret").write_text(secret + "\n")
    path = write(
        tmp_path,
        MINIMAL
        + '[[webhooks]]\nurl = "https://crm.example/hooks"\nevents = ["completed", "failed"]\n'
        + 'secret_file = "hook.secret"\n',
    )
    hub = build_hub(load_settings(path), base=tmp_path)
    [endpoint] = hub.webhooks
    assert (endpoint.name, endpoint.events) == ("webhook-1", frozenset({"completed", "failed"}))
    assert endpoint.secret == secret
    assert secret not in repr(endpoint)
    missing = write(tmp_path, MINIMAL + '[[webhooks]]\nurl = "https://crm.example/hooks"\n')
    with pytest.raises(ConfigError, match=r"webhooks\.webhook-1: no secret"):
        build_hub(load_settings(missing), base=tmp_path)


def webhook(name: str | None = None) -> str:
    """A [[webhooks]] table (named ``name``, if given) with a valid secret."""
    import base64

    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    named = f'name = "{name}"\n' if name else ""
    return f'[[webhooks]]\n{named}url = "https://crm.example/hooks"\nsecret = "{secret}"\n'


@pytest.mark.parametrize(
    ("name", "error"), [(None, "give each webhook a name"), ("crm", "a name of its own")]
)
def test_several_webhooks_need_names_of_their_own(
    tmp_path: Path, name: str | None, error: str
) -> None:
    path = write(tmp_path, MINIMAL + webhook(name) + webhook(name))
    with pytest.raises(ConfigError, match=error):
        build_hub(load_settings(path), base=tmp_path)


def test_a_cluster_on_sqlite_is_refused_naming_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[cluster]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r"cluster: .*need PostgreSQL.*postgresql://"):
        build_hub(load_settings(path), base=tmp_path)


def test_the_pinecall_key_file_wins_over_the_environment_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("pk_from_file\n")
    monkeypatch.setenv("PINECALL_API_KEY", "pk_from_env")
    text = PINECALL.replace('voice = "alloy"', f'voice = "alloy"\napi_key_file = "{key_file}"')
    settings = load_settings(write(tmp_path, text))
    assert build_hub(settings, base=tmp_path).agent._api_key == "pk_from_file"  # type: ignore[attr-defined]


def test_a_python_strategy_beside_the_configuration_is_found(tmp_path: Path) -> None:
    (tmp_path / "my_crm_beside.py").write_text(
        "from dispatch import Strategy\n\n"
        "class Crm(Strategy):\n"
        "    async def poll(self):\n"
        "        return []\n"
    )
    path = write(tmp_path, '[[strategies]]\nkind = "python"\npath = "my_crm_beside:Crm"\n')
    hub = build_hub(load_settings(path), base=tmp_path)
    assert type(hub.strategies[0]).__name__ == "Crm"
