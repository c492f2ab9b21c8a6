"""Configuration: a TOML file, overridable by ``DISPATCH_...`` environment variables.

Every key maps onto a constructor argument of the library (``DispatchHub``, ``Pacing``,
``RetryPolicy``, ``SimulatedAgent``, ``CsvStrategy``, ``SqlStrategy``), so nothing here is out of
reach from Python. Relative paths (the CSV file, a SQLite database) are resolved against the
directory holding the configuration file.

Environment overrides use ``__`` between levels: ``DISPATCH_PACING__MAX_CONCURRENT=5``,
``DISPATCH_STORE__URL=postgresql://...``. They win over the file.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from .abc import Agent, Strategy
from .agents import SimulatedAgent
from .errors import ConfigError
from .hub import DispatchHub
from .options import Backoff, Pacing, RecoverMode, RetryPolicy
from .store import Heartbeat, Store

if TYPE_CHECKING:
    from strategies._writeback import WriteBack

__all__ = [
    "AgentConfig",
    "CsvStrategyConfig",
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
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StoreConfig(_Section):
    url: str = Field("sqlite:///dispatch.db", description="SQLAlchemy URL of the ledger.")
    retry_initial: float = Field(
        0.5, gt=0, description="First wait before reaching an unreachable store again."
    )
    retry_max: float = Field(30.0, gt=0, description="Longest wait between tries.")
    heartbeat_interval: float = Field(5.0, gt=0, description="Seconds between heartbeats.")
    heartbeat_timeout: float = Field(
        30.0, gt=0, description="Silence after which a daemon counts as dead."
    )


class PacingConfig(_Section):
    max_calls_per_minute: int | None = Field(None, ge=1)
    max_concurrent: int = Field(1, ge=1)
    window: float = Field(60.0, gt=0, description="Seconds of the sliding window.")


class RetryConfig(_Section):
    attempts: int = Field(0, ge=0, description="Extra dials after a rejected one.")
    delay: float = Field(60.0, ge=0, description="Seconds before a retry.")


class CallbacksConfig(_Section):
    timeout: float = Field(30.0, gt=0, description="Seconds a callback may run.")
    retry_initial: float = Field(1.0, gt=0, description="First retry delay, doubled each time.")
    retry_max: float = Field(300.0, gt=0, description="Longest retry delay.")


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class SimulatedAgentConfig(_Section):
    kind: Literal["simulated"] = "simulated"
    answered: float = Field(0.7, ge=0)
    no_answer: float = Field(0.15, ge=0)
    busy: float = Field(0.1, ge=0)
    failed: float = Field(0.05, ge=0)
    ring_seconds: tuple[float, float] = (2.0, 8.0)
    talk_seconds: tuple[float, float] = (20.0, 120.0)
    time_scale: float = Field(1.0, ge=0)
    seed: int = 0

    def build(self) -> Agent:
        return SimulatedAgent(**self.model_dump(exclude={"kind"}))


class PinecallAgentConfig(_Section):
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
    config: dict[str, Any] = Field(default_factory=dict, description="More agent.create keys.")
    dial_timeout: float = Field(30.0, gt=0)
    ping_interval: float = Field(30.0, gt=0)

    def api_key_value(self) -> str:
        """The key from ``api_key``, ``api_key_file``, ``PINECALL_API_KEY`` or the systemd
        credential ``pinecall_api_key``, in that order; never logged."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        candidates = [self.api_key_file] if self.api_key_file else []
        if os.environ.get("PINECALL_API_KEY"):
            return os.environ["PINECALL_API_KEY"]
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "pinecall_api_key")
        for path in candidates:
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"agent.api_key_file: cannot read {path}: {exc.strerror}"
                ) from None
        raise ConfigError(
            "agent: no Pinecall API key (set PINECALL_API_KEY, agent.api_key_file or a systemd "
            "credential named pinecall_api_key)"
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
            dial_timeout=self.dial_timeout,
            ping_interval=self.ping_interval,
        )


AgentConfig = Annotated[SimulatedAgentConfig | PinecallAgentConfig, Field(discriminator="kind")]


class WriteBackConfig(_Section):
    status_column: str = Field("dispatch_status", min_length=1)
    call_id_column: str | None = None
    time_column: str | None = None


class _RowTemplates(_Section):
    """How a row (a CSV line, a table row) becomes a record: templates over its columns."""

    name: str | None = None
    id: str | None = None
    phone: str = "{phone}"
    greeting: str | None = None
    metadata: dict[str, str] | None = None
    prompt_vars: dict[str, str] = Field(default_factory=dict)
    from_: str | None = Field(None, alias="from")
    timezone: str | None = None
    write_back: WriteBackConfig | None = None

    def _write_back(self) -> WriteBack | None:
        from strategies._writeback import WriteBack

        return WriteBack(**self.write_back.model_dump()) if self.write_back else None


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

        options = self.model_dump(exclude={"kind", "path", "write_back", "results_path"})
        return CsvStrategy(
            _resolve(base, self.path),
            write_back=self._write_back(),
            results_path=_resolve(base, self.results_path) if self.results_path else None,
            **options,
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

        options = self.model_dump(exclude={"kind", "url", "password_file", "table", "write_back"})
        return SqlStrategy(
            self.database_url(base), self.table, write_back=self._write_back(), **options
        )

    def database_url(self, base: Path) -> URL:
        """The URL with a relative SQLite path resolved against ``base`` and the password
        from ``password_file`` (a systemd credential, say) filled in."""
        url = _anchored(make_url(self.url), base)
        if self.password_file is not None:
            path = _resolve(base, self.password_file)
            try:
                password = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"strategies: password_file: cannot read {path}: {exc.strerror}"
                ) from None
            url = url.set(password=password)
        return url


class PythonStrategyConfig(_Section):
    kind: Literal["python"]
    path: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="module:Class")
    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    def build(self, base: Path) -> Strategy:
        module_name, _, attr = self.path.partition(":")
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
        return strategy


StrategyConfig = Annotated[
    CsvStrategyConfig | SqlStrategyConfig | PythonStrategyConfig, Field(discriminator="kind")
]


class Settings(BaseSettings):
    """The whole configuration. See ``config.example.toml`` and docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix="DISPATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    # `from` in the file (parity with @pinecall/dispatch); no alias on the field itself, because
    # pydantic-settings would then read an unprefixed env var named `from`. Env: DISPATCH_FROM_.
    from_: str | None = Field(None, description="Default caller id (E.164).")
    default_region: str | None = Field(
        None, min_length=2, max_length=2, description="Region for numbers written without +."
    )
    poll_interval: float = Field(5.0, gt=0)
    drain_timeout: float = Field(30.0, ge=0)
    recover: RecoverMode = "interrupt"
    recover_hold: float = Field(600.0, ge=0, description="Seconds a number stays blocked.")
    store: StoreConfig = StoreConfig()
    pacing: PacingConfig = PacingConfig()
    retry: RetryConfig = RetryConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    logging: LoggingConfig = LoggingConfig()
    agent: AgentConfig = SimulatedAgentConfig()
    strategies: list[StrategyConfig] = Field(min_length=1)

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
        raise ConfigError(f"{path}: {_describe(exc)}") from None


_TAGS = ("csv", "sql", "python", "simulated", "pinecall")


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        # Discriminated unions add the tag ("csv") to the location; drop it for readability.
        loc = [p for p in error["loc"] if p not in _TAGS]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{key or '(top level)'}: {message}")
    return "; ".join(problems)


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
        )
    except ValueError as exc:
        raise ConfigError(f"store: {exc}") from exc


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
            from_=settings.from_,
            store=build_store(settings, base),
            pacing=Pacing(**settings.pacing.model_dump()),
            retry=RetryPolicy(**settings.retry.model_dump()),
            poll_interval=settings.poll_interval,
            drain_timeout=settings.drain_timeout,
            default_region=settings.default_region,
            recover=settings.recover,
            recover_hold=settings.recover_hold,
            callback_timeout=settings.callbacks.timeout,
            callback_backoff=Backoff(
                settings.callbacks.retry_initial, settings.callbacks.retry_max
            ),
            exit_when_done=exit_when_done,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
