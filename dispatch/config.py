"""Configuration: a TOML file, overridable by ``DISPATCH_...`` environment variables.

Every key maps onto a constructor argument of the library (``DispatchHub``, ``Pacing``,
``RetryPolicy``, ``SimulatedAgent``, ``CsvStrategy``, ``SqlStrategy``), so nothing here is out of
reach from Python. Relative paths (the CSV file, a SQLite database) are resolved against the
directory holding the configuration file.

Environment overrides use ``__`` between levels: ``DISPATCH_PACING__MAX_CONCURRENT=5``,
``DISPATCH_STORE__URL=postgresql://...``. They win over the same key in the file (other
variables, such as ``PINECALL_API_KEY``, have their own place in the order of their key).
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .abc import Agent, Strategy
from .agents import SimulatedAgent
from .errors import ConfigError, StoreError
from .hub import DispatchHub
from .options import Backoff, Pacing, RecoverMode, RetryPolicy, RetryRule
from .results import ActionKind
from .rules.caps import Caps
from .rules.gate import CallingRules
from .store import Heartbeat, Store, async_url

if TYPE_CHECKING:
    from strategies._writeback import WriteBack

    from .results import ResultAction, ResultTool
    from .rules.hours import RulePack
    from .webhooks import WebhookEndpoint

__all__ = [
    "AgentConfig",
    "CsvStrategyConfig",
    "HttpStrategyConfig",
    "PinecallAgentConfig",
    "PythonStrategyConfig",
    "Settings",
    "SqlStrategyConfig",
    "WriteBackConfig",
    "build_hub",
    "build_store",
    "load_settings",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


# What a store URL looks like, for the messages that refuse one.
STORE_URL_FORMS = (
    "sqlite:///path/to/dispatch.db (relative to the configuration file; sqlite:////var/lib/... "
    "for an absolute path) or postgresql://user:password@host/db"
)


def _store_url(value: object) -> object:
    """A URL SQLAlchemy reads, of a store we support: refused here, with the forms that work,
    rather than as a driver's traceback when the store is opened. The value is never quoted:
    a URL that does not parse may still hold a password."""
    if not isinstance(value, str):
        return value
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(f"not a URL: [store] url is {STORE_URL_FORMS}") from None
    if url.get_backend_name() == "sqlite" and url.host:
        raise ValueError(
            f"sqlite://{url.host} names a host, not a file (two slashes where three belong): "
            f"[store] url is {STORE_URL_FORMS}"
        )
    try:
        async_url(url)
    except StoreError:
        raise ValueError(
            f"unsupported store {url.get_backend_name()!r}: [store] url is {STORE_URL_FORMS}"
        ) from None
    return value


class StoreConfig(_Section):
    url: Annotated[str, AfterValidator(_store_url)] = Field(
        "sqlite:///dispatch.db", description="SQLAlchemy URL of the ledger."
    )
    retry_initial: float = Field(
        0.5, gt=0, description="First wait before reaching an unreachable store again."
    )
    retry_max: float = Field(30.0, gt=0, description="Longest wait between tries.")
    heartbeat_interval: float = Field(5.0, gt=0, description="Seconds between heartbeats.")
    heartbeat_timeout: float = Field(
        30.0, gt=0, description="Silence after which a daemon counts as dead."
    )


def _duration(value: object) -> object:
    """``"30s"``, ``"10m"``, ``"2h"``, ``"60d"`` or plain seconds, as seconds."""
    if isinstance(value, str):
        from .rules import parse_duration

        return parse_duration(value)
    return value


# A duration in seconds, written as seconds or as "30s", "10m", "2h", "60d".
Duration = Annotated[float, BeforeValidator(_duration)]


def _region(value: object) -> object:
    """A region phonenumbers knows, in capitals (``"us"`` -> ``"US"``)."""
    if not isinstance(value, str):
        return value
    import phonenumbers

    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"unknown region {value!r} (give a country code phonenumbers knows: US, GB, FR...)"
        )
    return region


class ClusterConfig(_Section):
    """``[cluster]``: several daemons on one PostgreSQL run one campaign (docs/operations.md,
    "Running several daemons")."""

    enabled: bool = False


class MetricsConfig(_Section):
    """``[metrics]``: a Prometheus ``/metrics`` and a ``/healthz`` endpoint (docs/metrics.md)."""

    listen: str | None = Field(
        None,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):\d{1,5}$",
        description='"127.0.0.1:9108"; unset: no endpoint.',
    )
    health_store_grace: Duration = Field(
        60.0, ge=0, description="Store outage after which /healthz answers 503."
    )
    health_agent_grace: Duration = Field(
        120.0, ge=0, description="Agent disconnection after which /healthz answers 503."
    )


class PacingConfig(_Section):
    max_calls_per_minute: int | None = Field(None, ge=1)
    max_concurrent: int = Field(1, ge=1)
    window: Duration = Field(60.0, gt=0, description="Seconds of the sliding window.")
    max_calls_per_second: float | None = Field(
        None, gt=0, description="Smooth dial starts to this rate (carriers' CPS limits)."
    )


class RetryRuleConfig(_Section):
    attempts: int = Field(0, ge=0, description="Extra dials after this kind of rejection.")
    delay: Duration | None = Field(None, ge=0, description="Before each (default [retry] delay).")


class RetryConfig(_Section):
    attempts: int = Field(0, ge=0, description="Extra dials after a rejected one.")
    delay: Duration = Field(60.0, ge=0, description="Seconds before a retry.")
    busy: RetryRuleConfig | None = None
    no_answer: RetryRuleConfig | None = None
    failed: RetryRuleConfig | None = None

    def policy(self) -> RetryPolicy:
        by_reason = {
            kind: RetryRule(rule.attempts, self.delay if rule.delay is None else rule.delay)
            for kind in ("busy", "no_answer", "failed")
            if (rule := getattr(self, kind)) is not None
        }
        return RetryPolicy(self.attempts, self.delay, by_reason)


class CapsConfig(_Section):
    """``[caps]`` (every strategy) and ``[strategies.caps]`` (tighter, for one)."""

    per_24h: int | None = Field(None, ge=1, description="Attempts per number per rolling 24 h.")
    per_30d: int | None = Field(None, ge=1, description="Attempts per number per 30 days.")
    min_gap: Duration | None = Field(None, ge=0, description="Between two calls to a number.")
    cooldown_after_refusal: Duration | None = Field(None, ge=0)

    def build(self) -> Caps:
        return Caps(self.per_24h, self.per_30d, self.min_gap, self.cooldown_after_refusal)


class WindowConfig(_Section):
    days: str = "mon-sun"
    from_: str = Field(alias="from")
    to: str


class CallingHoursConfig(_Section):
    """``[strategies.calling_hours]``: a rule pack, or windows of your own."""

    rules: str | None = Field(None, description='"us", "us-fl", "fr", or a path to a pack.')
    windows: list[WindowConfig] | None = None
    holidays: str | None = Field(None, description="A country (FR, US-FL) for holidays.")
    timezone: str | None = Field(None, description="Zone of numbers that map to none.")

    def build(self, base: Path) -> RulePack:
        from .rules import hours

        try:
            if self.rules is not None and self.windows is not None:
                raise ValueError("give rules or windows, not both")
            if self.rules is not None:
                path = Path(self.rules)
                if self.rules in hours.BUILTIN_PACKS or (
                    path.suffix != ".toml" and "/" not in self.rules
                ):
                    return hours.load_pack(self.rules)  # a built-in name (or a wrong one)
                return hours.load_pack(_resolve(base, path))
            if not self.windows:
                raise ValueError("give rules (a pack) or windows")
            windows = hours.windows_from_config(
                [{"days": w.days, "from": w.from_, "to": w.to} for w in self.windows]
            )
            return hours.custom_pack(windows, holidays=self.holidays, timezone=self.timezone)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"strategies.calling_hours: {exc}") from None


class ActiveConfig(_Section):
    from_: date | None = Field(None, alias="from")
    until: date | None = None


class CallbacksConfig(_Section):
    timeout: float = Field(30.0, gt=0, description="Seconds a callback may run.")
    retry_initial: float = Field(1.0, gt=0, description="First retry delay, doubled each time.")
    retry_max: float = Field(300.0, gt=0, description="Longest retry delay.")
    concurrency: int = Field(
        500, ge=1, le=10_000, description="Callbacks (of distinct records) delivered at once."
    )


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    phone: Literal["full", "last4"] = Field(
        "full", description='"last4" masks phone numbers in logs to their last four digits.'
    )


class ResultToolConfig(_Section):
    """``[[agent.tools]]``: a result tool the agent's model calls to report an answer."""

    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="A JSON schema for the arguments (an object schema).",
    )


class _AgentSection(_Section):
    tools: list[ResultToolConfig] = Field(default_factory=list)

    def result_tools(self) -> list[ResultTool]:
        from .results import ResultTool

        built = []
        for i, tool in enumerate(self.tools):
            try:
                built.append(ResultTool(tool.name, tool.description, tool.parameters))
            except ValueError as exc:
                raise ConfigError(f"agent.tools[{i}]: {exc}") from None
        names = [t.name for t in built]
        if len(set(names)) != len(names):
            raise ConfigError(f"agent.tools: a tool name is given twice ({', '.join(names)})")
        return built


class SimulatedResultConfig(_Section):
    """One entry of the simulated agent's result mix: ``tool`` called with ``arguments``."""

    tool: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0)


class SimulatedAgentConfig(_AgentSection):
    kind: Literal["simulated"] = "simulated"
    answered: float = Field(0.7, ge=0)
    no_answer: float = Field(0.15, ge=0)
    busy: float = Field(0.1, ge=0)
    failed: float = Field(0.05, ge=0)
    ring_seconds: tuple[float, float] = (2.0, 8.0)
    talk_seconds: tuple[float, float] = (20.0, 120.0)
    time_scale: float = Field(1.0, ge=0)
    seed: int = 0
    results: list[SimulatedResultConfig] = Field(
        default_factory=list,
        description="The answers callees give, drawn by weight; default: from the tools.",
    )

    def build(self) -> Agent:
        from .agents.simulated import SimulatedResult

        options = self.model_dump(exclude={"kind", "tools", "results"})
        mix = [SimulatedResult(r.tool, r.arguments, r.weight) for r in self.results]
        try:
            return SimulatedAgent(**options, tools=self.result_tools(), results=mix)
        except ValueError as exc:
            raise ConfigError(f"agent: {exc}") from None


class PinecallAgentConfig(_AgentSection):
    kind: Literal["pinecall"]
    agent_id: str = Field(min_length=1)
    url: str = "wss://voice.pinecall.io"
    api_key: SecretStr | None = Field(None, description="Prefer the env var or a file.")
    api_key_file: Path | None = None
    phone_numbers: list[str] = Field(default_factory=list)
    voice: str | None = None
    language: str | None = None
    stt: str | dict[str, Any] | None = None
    llm: str | dict[str, Any] | None = None
    prompt: str | None = None
    vars: dict[str, Any] = Field(
        default_factory=dict, description="Prompt variables for every call (agent-level)."
    )
    detect_turn_end: bool | None = Field(
        None, description="Default dial option; a record's config may override it."
    )
    config: dict[str, Any] = Field(default_factory=dict, description="More agent.create keys.")
    dial_timeout: float = Field(30.0, gt=0)
    ping_interval: float = Field(30.0, gt=0)

    def api_key_value(self) -> str:
        """The key from ``api_key``, ``api_key_file``, ``PINECALL_API_KEY`` or the systemd
        credential ``pinecall_api_key``: the first one set, in that order (as
        docs/configuration.md says); never logged."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            return read_secret(self.api_key_file, "agent.api_key_file")
        if os.environ.get("PINECALL_API_KEY"):
            return os.environ["PINECALL_API_KEY"]
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            credential = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "pinecall_api_key"
            if credential.exists():
                return read_secret(credential, "the pinecall_api_key credential")
        raise ConfigError(
            "agent: no Pinecall API key (set agent.api_key_file, PINECALL_API_KEY or the "
            "systemd credential pinecall_api_key: /etc/credstore/pinecall_api_key with the "
            "shipped unit)"
        )

    def build(self) -> Agent:
        from .agents.pinecall import PinecallAgent  # only a Pinecall setup loads websockets

        agent_config = {
            key: value
            for key in ("voice", "language", "stt", "llm", "prompt")
            if (value := getattr(self, key)) is not None
        }
        return PinecallAgent(
            api_key=self.api_key_value(),
            agent_id=self.agent_id,
            url=self.url,
            phone_numbers=self.phone_numbers,
            config={**agent_config, **self.config},
            tools=self.result_tools(),
            vars=self.vars,
            detect_turn_end=self.detect_turn_end,
            dial_timeout=self.dial_timeout,
            ping_interval=self.ping_interval,
        )


AgentConfig = Annotated[SimulatedAgentConfig | PinecallAgentConfig, Field(discriminator="kind")]


class WriteBackConfig(_Section):
    status_column: str = Field("dispatch_status", min_length=1)
    call_id_column: str | None = None
    time_column: str | None = None
    result_columns: dict[str, str] = Field(
        default_factory=dict, description="Result field -> column, e.g. status = 'Appointment'."
    )
    path: Path | None = Field(None, description="CSV: write into this working copy instead.")


class ResultActionConfig(_Section):
    """``[[strategies.result_actions]]``: what a matching result makes of the record."""

    action: ActionKind
    tool: str | None = None
    when: dict[str, Any] = Field(default_factory=dict)
    at: str = Field("call_back_at", min_length=1)
    timezone: str | None = None

    def build(self) -> ResultAction:
        from .results import ResultAction

        if self.timezone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"result_actions: unknown time zone {self.timezone!r}") from None
        return ResultAction(self.action, self.tool, self.when, self.at, self.timezone)


_RULE_KEYS = (
    "result_actions",
    "calling_hours",
    "caps",
    "schedule",
    "schedule_timezone",
    "active",
    "opt_out_reasons",
)


class _StrategySection(_Section):
    result_actions: list[ResultActionConfig] = Field(default_factory=list)
    calling_hours: CallingHoursConfig | None = None
    caps: CapsConfig | None = None
    schedule: str | None = Field(None, description='Cron: "0 9-17 * * mon-fri".')
    schedule_timezone: str = "UTC"
    active: ActiveConfig | None = None
    opt_out_reasons: list[str] = Field(
        default_factory=list, description="End reasons that put the number on the DNC list."
    )

    def _with_rules(self, strategy: Strategy, base: Path) -> Strategy:
        if self.result_actions:
            strategy.result_actions = tuple(a.build() for a in self.result_actions)
        pack = self.calling_hours.build(base) if self.calling_hours else None
        caps = self.caps.build() if self.caps else Caps()
        schedule = None
        if self.schedule is not None or self.active is not None:
            from zoneinfo import ZoneInfo

            from .rules.schedule import Schedule

            active = self.active or ActiveConfig()
            try:
                schedule = Schedule(
                    self.schedule, active.from_, active.until, ZoneInfo(self.schedule_timezone)
                )
            except (ValueError, KeyError) as exc:
                raise ConfigError(f"strategies.schedule: {exc}") from None
        reasons = frozenset(self.opt_out_reasons)
        if pack is not None or caps or schedule is not None or reasons:
            strategy.calling_rules = CallingRules(pack, caps, schedule, reasons)
        return strategy


class _Templates(_StrategySection):
    """How a row (a CSV line, a table row, an API's item) becomes a record: templates over
    its fields."""

    name: str | None = None
    id: str | None = None
    phone: str = "{phone}"
    greeting: str | None = None
    metadata: dict[str, str] | None = None
    prompt_vars: dict[str, str] = Field(default_factory=dict)
    from_: str | None = Field(None, alias="from")
    timezone: str | None = None
    not_before: str | None = None
    not_after: str | None = None
    config: dict[str, str] | None = None


class _RowTemplates(_Templates):
    write_back: WriteBackConfig | None = None

    def _write_back(self, base: Path) -> WriteBack | None:
        from strategies._writeback import WriteBack

        if self.write_back is None:
            return None
        options = self.write_back.model_dump(exclude={"path"})
        path = self.write_back.path
        return WriteBack(**options, path=str(_resolve(base, path)) if path else None)


class CsvStrategyConfig(_RowTemplates):
    kind: Literal["csv"]
    path: Path
    skip_if: dict[str, list[str]] = Field(default_factory=dict)
    delimiter: str | None = Field(None, min_length=1, max_length=1)
    encoding: str = "utf-8"
    watch: bool = True
    settle: float = Field(1.0, ge=0)
    rescan_interval: float = Field(300.0, gt=0)
    results_path: Path | None = None

    def build(self, base: Path) -> Strategy:
        # strategies depend on dispatch, not the reverse
        from strategies.csv import CsvStrategy

        options = self.model_dump(
            exclude={"kind", "path", "write_back", "results_path", *_RULE_KEYS}
        )
        return self._with_rules(
            CsvStrategy(
                _resolve(base, self.path),
                write_back=self._write_back(base),
                results_path=_resolve(base, self.results_path) if self.results_path else None,
                **options,
            ),
            base,
        )


class SqlStrategyConfig(_RowTemplates):
    kind: Literal["sql"]
    url: str = Field(min_length=1, description="SQLAlchemy URL; the password may be left out.")
    password_file: Path | None = Field(None, description="A file holding the password.")
    table: str = Field(min_length=1)
    where: str | None = None
    due_column: str | None = None
    fetch_size: int = Field(5000, ge=1)

    def build(self, base: Path) -> Strategy:
        from strategies.sql import SqlStrategy

        if self.write_back is not None and self.write_back.path is not None:
            raise ConfigError(
                f"strategies: write_back.path is for CSV files; a SQL strategy ({self.table}) "
                "writes into its own table"
            )
        options = self.model_dump(
            exclude={"kind", "url", "password_file", "table", "write_back", *_RULE_KEYS}
        )
        return self._with_rules(
            SqlStrategy(
                self.database_url(base), self.table, write_back=self._write_back(base), **options
            ),
            base,
        )

    def database_url(self, base: Path) -> URL:
        """The URL with a relative SQLite path resolved against ``base`` and the password
        from ``password_file`` (a systemd credential, say) filled in."""
        url = _anchored(make_url(self.url), base)
        if self.password_file is not None:
            path = _resolve(base, self.password_file)
            url = url.set(password=read_secret(path, "strategies: password_file"))
        return url


class HttpAuthConfig(_Section):
    """``[strategies.auth]``: one secret, from one source, in one header."""

    token: SecretStr | None = Field(None, description="Prefer token_env, token_file, credential.")
    token_env: str | None = Field(None, min_length=1, description="An environment variable.")
    token_file: Path | None = Field(None, description="A file holding the secret.")
    credential: str | None = Field(None, min_length=1, description="A systemd credential.")
    header: str = Field("Authorization", min_length=1)
    scheme: str | None = Field(None, description='Default: "Bearer" in Authorization, else none.')


class HttpWriteBackConfig(_Section):
    """``[strategies.write_back]`` of an HTTP strategy: each outcome sent to the API."""

    url: str = Field(min_length=1, description='A template, relative to url: "leads/{id}".')
    method: Literal["PATCH", "POST", "PUT"] = "PATCH"
    status_field: str = Field("dispatch_status", min_length=1)
    call_id_field: str | None = None
    time_field: str | None = None
    result_fields: dict[str, str] = Field(
        default_factory=dict, description="Result field -> body field, e.g. status = 'answer'."
    )


class HttpStrategyConfig(_Templates):
    """``kind = "http"``: a JSON endpoint, polled (``HttpStrategy``)."""

    kind: Literal["http"]
    url: str = Field(min_length=1)
    items: str | None = Field(None, description='Path to the list: "payload.leads".')
    next: str | None = Field(None, description='Path to the next URL or cursor: "meta.next".')
    cursor_param: str = Field("cursor", min_length=1)
    params: dict[str, str] = Field(default_factory=dict, description="Query parameters.")
    headers: dict[str, str] = Field(default_factory=dict, description="No secrets: see auth.")
    auth: HttpAuthConfig | None = None
    write_back: HttpWriteBackConfig | None = None
    timeout: Duration = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    retry_wait: Duration = Field(0.5, gt=0, description="First wait before a retry, doubled.")
    max_retry_wait: Duration = Field(60.0, gt=0, description="Longest wait, Retry-After too.")
    max_bytes: int = Field(20_000_000, ge=1)
    max_pages: int = Field(1000, ge=1)

    def build(self, base: Path) -> Strategy:
        from strategies.http import HttpAuth, HttpStrategy, HttpWriteBack

        where = f"strategies ({self.name or 'http'})"
        options = self.model_dump(
            exclude={"kind", "url", "auth", "write_back", "retry_wait", "max_retry_wait"}
            | set(_RULE_KEYS)
        )
        try:
            auth = None
            if self.auth is not None:
                given = self.auth.model_dump(exclude={"token", "token_file"})
                token = self.auth.token.get_secret_value() if self.auth.token else None
                path = _resolve(base, self.auth.token_file) if self.auth.token_file else None
                auth = HttpAuth(token=token, token_file=path, **given)
            write_back = None
            if self.write_back is not None:
                write_back = HttpWriteBack(**self.write_back.model_dump())
            backoff = Backoff(self.retry_wait, max(self.retry_wait, self.max_retry_wait))
            strategy = HttpStrategy(
                self.url, auth=auth, write_back=write_back, backoff=backoff, **options
            )
        except ValueError as exc:  # HttpStrategy's own ConfigErrors name the strategy
            raise ConfigError(f"{where}: {exc}") from None
        return self._with_rules(strategy, base)


class PythonStrategyConfig(_StrategySection):
    kind: Literal["python"]
    path: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="module:Class")
    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    def build(self, base: Path) -> Strategy:
        module_name, _, attr = self.path.partition(":")
        # A module beside the configuration file is found, as a user expects.
        if str(base) not in sys.path:
            sys.path.insert(0, str(base))
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"strategies: cannot import {self.path!r}: {exc}") from exc
        options = dict(self.options)
        if self.name is not None:
            options["name"] = self.name
        strategy = target(**options)
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"strategies: {self.path!r} did not produce a dispatch.Strategy")
        return self._with_rules(strategy, base)


StrategyConfig = Annotated[
    CsvStrategyConfig | SqlStrategyConfig | HttpStrategyConfig | PythonStrategyConfig,
    Field(discriminator="kind"),
]


class WebhookConfig(_Section):
    """``[[webhooks]]``: signed outcome events POSTed to a URL (Standard Webhooks)."""

    name: str | None = Field(None, description="Default: webhook-1, webhook-2 ...")
    url: str = Field(min_length=1)
    events: list[str] = Field(
        default_factory=lambda: ["dispatched", "result", "completed", "failed", "skipped"]
    )
    secret: SecretStr | None = Field(None, description="Prefer secret_file.")
    secret_file: Path | None = Field(None, description="A file holding the whsec_ secret.")
    timeout: Duration = Field(10.0, gt=0)

    def build(self, base: Path, number: int) -> WebhookEndpoint:
        from .webhooks import WebhookEndpoint

        name = self.name or f"webhook-{number}"
        if self.secret is not None:
            secret = self.secret.get_secret_value()
        elif self.secret_file is not None:
            path = _resolve(base, self.secret_file)
            secret = read_secret(path, f"webhooks.{name}: secret_file")
        else:
            raise ConfigError(
                f"webhooks.{name}: no secret (give secret_file, a file holding a whsec_ secret)"
            )
        try:
            return WebhookEndpoint(name, self.url, secret, frozenset(self.events), self.timeout)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


class Settings(BaseSettings):
    """The whole configuration. See ``config.example.toml`` and docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix="DISPATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        defer_build=True,
    )

    # `from` in the file (parity with @pinecall/dispatch); no alias on the field itself, because
    # pydantic-settings would then read an unprefixed env var named `from`. Env: DISPATCH_FROM_.
    from_: str | None = Field(None, description="Default caller id (E.164).")
    default_region: Annotated[str | None, BeforeValidator(_region)] = Field(
        None, min_length=2, max_length=2, description="Region for numbers written without +."
    )
    poll_interval: float = Field(5.0, gt=0)
    drain_timeout: float = Field(30.0, ge=0)
    recover: RecoverMode = "interrupt"
    recover_hold: float = Field(600.0, ge=0, description="Seconds a number stays blocked.")
    store: StoreConfig = StoreConfig()
    pacing: PacingConfig = PacingConfig()
    retry: RetryConfig = RetryConfig()
    caps: CapsConfig = CapsConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    cluster: ClusterConfig = ClusterConfig()
    agent: AgentConfig = SimulatedAgentConfig()
    strategies: list[StrategyConfig] = Field(min_length=1)
    webhooks: list[WebhookConfig] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init values).
        return env_settings, file_secret_settings, init_settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate a TOML configuration; raise :class:`ConfigError` naming the bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if "from" in data:
        if "from_" in data:
            raise ConfigError(f"{path}: from: given twice (as from and from_)")
        data["from_"] = data.pop("from")
    # The default agent, spelled out: an override such as DISPATCH_AGENT__TIME_SCALE is
    # merged into the file's [agent], and needs its kind there to know what it overrides.
    data.setdefault("agent", {"kind": "simulated"})
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except SettingsError as exc:  # an environment variable that is not valid JSON
        field = "DISPATCH_" + str(exc).partition('field "')[2].partition('"')[0].upper()
        found = [name for key, name in _env_variables().items() if key.startswith(field)]
        names = ", ".join(found) or "DISPATCH_..."
        raise ConfigError(
            f"environment ({names}): {exc} (lists and tables are written as JSON: [2, 8])"
        ) from None


_TAGS = ("csv", "sql", "http", "python", "simulated", "pinecall")


def _describe(exc: ValidationError, path: Path) -> str:
    problems, overridden = [], []
    for error in exc.errors():
        # Discriminated unions add the tag ("csv") to the location; drop it for readability.
        loc = [p for p in error["loc"] if p not in _TAGS]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "value_error" and "error" in error.get("ctx", {}):
            message = str(error["ctx"]["error"])  # our own words, without "Value error, "
        # The environment wins over the file: blame the variable when one sets this key.
        variable = _env_variable(loc)
        if variable is None:
            problems.append(f"{key or '(top level)'}: {message}")
            continue
        if variable.upper().startswith(_env_name(loc) + "__") and error["type"] == "list_type":
            # DISPATCH_STRATEGIES__0__PATH made `strategies` a table {"0": {...}}, not a list.
            message += (
                " (a list cannot be changed item by item from the environment: set the whole "
                f"list as JSON in {_env_name(loc)}, or change the file)"
            )
        overridden.append(f"environment variable {variable} (sets {key}): {message}")
    return "; ".join(([f"{path}: " + "; ".join(problems)] if problems else []) + overridden)


def _env_variables() -> dict[str, str]:
    """The DISPATCH_ variables set, by their upper-case name (the settings ignore case)."""
    return {k.upper(): k for k in os.environ if k.upper().startswith("DISPATCH_")}


def _env_name(loc: list[int | str]) -> str:
    """The variable named after the key at ``loc``, up to its first list index
    (``["pacing", "max_concurrent"]`` -> ``DISPATCH_PACING__MAX_CONCURRENT``)."""
    keys = [str(p) for p in loc[: next((i for i, p in enumerate(loc) if isinstance(p, int)), None)]]
    return "DISPATCH_" + "__".join(keys).upper()


def _env_variable(loc: list[int | str]) -> str | None:
    """The variable that set the value at ``loc`` (``DISPATCH_PACING__MAX_CONCURRENT``, or
    ``DISPATCH_PACING`` holding JSON), or one below it that replaced it
    (``DISPATCH_STRATEGIES__0__PATH`` makes ``strategies`` a table), if one did."""
    names = _env_variables()
    full = _env_name(loc)
    keys = full.removeprefix("DISPATCH_").split("__")
    for n in range(len(keys), 0, -1):
        if (name := "DISPATCH_" + "__".join(keys[:n])) in names:
            return names[name]
    below = sorted(name for name in names if name.startswith(full + "__"))
    return names[below[0]] if below and full != "DISPATCH_" else None


def read_secret(path: Path, key: str) -> str:
    """A secret kept in a file (a systemd credential, say), or a ConfigError naming ``key``."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def store_url(settings: Settings, base: Path) -> str:
    """The store URL with a relative SQLite path resolved against ``base``."""
    return _anchored(make_url(settings.store.url), base).render_as_string(hide_password=False)


def _anchored(url: URL, base: Path) -> URL:
    database = url.database
    if url.get_backend_name() == "sqlite" and database and database != ":memory:":
        url = url.set(database=str(_resolve(base, Path(database))))
    return url


def build_store(settings: Settings, base: Path) -> Store:
    """The store the configuration describes (not opened)."""
    options = settings.store
    try:
        return Store(
            store_url(settings, base),
            retry=Backoff(options.retry_initial, options.retry_max),
            heartbeat=Heartbeat(options.heartbeat_interval, options.heartbeat_timeout),
            cluster=settings.cluster.enabled,
        )
    except ValueError as exc:
        raise ConfigError(f"store: {exc}") from exc
    except StoreError as exc:  # [cluster] on SQLite
        raise ConfigError(f"cluster: {exc}") from exc


def _webhooks(settings: Settings, base: Path) -> list[WebhookEndpoint]:
    hooks = settings.webhooks
    if len(hooks) > 1 and any(h.name is None for h in hooks):
        # Pending events are tied to their endpoint by name: one named by its position would
        # get another's events once the list changes.
        raise ConfigError("webhooks: give each webhook a name when there are several")
    built = [hook.build(base, n) for n, hook in enumerate(hooks, 1)]
    names = [hook.name for hook in built]
    if len(set(names)) != len(names):
        raise ConfigError(f"webhooks: each webhook needs a name of its own, got {names}")
    return built


def hub_settings(settings: Settings, base: Path) -> dict[str, Any]:
    """The hub's keyword arguments that a reload may change
    (:meth:`~dispatch.DispatchHub.reconfigure` takes the same), strategies aside."""
    try:
        return {
            "from_": settings.from_,
            "pacing": Pacing(**settings.pacing.model_dump()),
            "retry": settings.retry.policy(),
            "caps": settings.caps.build(),
            "webhooks": _webhooks(settings, base),
            "poll_interval": settings.poll_interval,
            "drain_timeout": settings.drain_timeout,
            "default_region": settings.default_region,
        }
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


# What a reload cannot change: the daemon keeps running with the values it started with.
RESTART_ONLY = (
    "store", "agent", "metrics", "logging", "callbacks", "recover", "recover_hold", "cluster"
)  # fmt: skip


def build_hub(
    settings: Settings, *, base: Path | None = None, exit_when_done: bool = False
) -> DispatchHub:
    """Construct the hub the configuration describes; ``base`` anchors relative paths."""
    base = base or Path.cwd()
    strategies = [config.build(base) for config in settings.strategies]
    try:
        return DispatchHub(
            agent=settings.agent.build(),
            strategies=strategies,
            store=build_store(settings, base),
            recover=settings.recover,
            recover_hold=settings.recover_hold,
            callback_timeout=settings.callbacks.timeout,
            callback_backoff=Backoff(
                settings.callbacks.retry_initial, settings.callbacks.retry_max
            ),
            callback_concurrency=settings.callbacks.concurrency,
            exit_when_done=exit_when_done,
            **hub_settings(settings, base),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
