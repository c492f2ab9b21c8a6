"""Log output for the daemon: readable text or JSON lines, on stdout.

Library code only logs through ``logging.getLogger(__name__)``; configuring output is the
daemon's job alone.

- Under journald (``$JOURNAL_STREAM`` names our stdout), every line starts with its syslog
  priority (``<4>`` for a warning), so ``journalctl -p warning`` filters by level; the time is
  left to journald.
- Every handler carries the :class:`SecretFilter`: a secret the configuration holds (API key,
  passwords, tokens, webhook secrets; see :func:`register_secrets`) never reaches a line, at
  any level, in the message, its arguments, a traceback or a field given with ``extra=``.
- JSON lines carry the ``key=value`` pairs of our messages as fields of their own
  (``{"event": "dial.start", "strategy": "leads", "record": "r1", ...}``), with their values
  as logged (numbers stay numbers), and whatever came with ``extra=``.
- ``phone="last4"`` (``[logging] phone``) masks phone numbers in every line, keeping their
  last four digits (``+*******2671``).
- Third-party loggers (websockets, watchfiles, alembic, SQLAlchemy) say only warnings unless
  the level is DEBUG, and their lines lead with the logger's name where ours lead with an
  event name, so every line starts with a stable word.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal, TextIO
from urllib.parse import quote

__all__ = [
    "SecretFilter",
    "configure_logging",
    "mask_phones",
    "quiet_http_logs",
    "redact",
    "register_secrets",
]

REDACTED = "***"
# Shorter values are not taken for secrets: replacing them would mangle every line.
MIN_SECRET_LENGTH = 4

# The level each third-party logger gets when ours is DEBUG; at INFO and above, WARNING.
_THIRD_PARTY = {
    "sqlalchemy": logging.WARNING,  # its DEBUG is every row
    "aiosqlite": logging.WARNING,
    "alembic": logging.INFO,
    "watchfiles": logging.INFO,
    "websockets": logging.DEBUG,  # the frames: where a key would show, but for the filter
}
# Loggers whose messages do not start with an event name of ours.
_FOREIGN = (*_THIRD_PARTY, "httpx", "httpcore", "asyncpg", "aiomysql", "asyncio", "apscheduler")


class _Secrets:
    """The secret values to keep out of logs, as one pattern."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            if len(value) < MIN_SECRET_LENGTH:
                continue
            # As written, and as JSON, repr() and a URL would spell it.
            self.values |= {value, json.dumps(value)[1:-1], repr(value)[1:-1], quote(value, "")}
        if self.values:
            ordered = sorted(self.values, key=len, reverse=True)  # the longest spelling first
            self.pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def redact(self, text: str) -> str:
        return text if self.pattern is None else self.pattern.sub(REDACTED, text)

    def found_in(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text) is not None


_SECRETS = _Secrets()


def register_secrets(values: Iterable[str]) -> None:
    """Add values that no log line, at any level, may show (the daemon registers every secret
    its configuration holds before it starts anything)."""
    _SECRETS.add(values)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (for output that is not a log
    line: the command line's messages)."""
    return _SECRETS.redact(text)


# The attributes every LogRecord has; the others came with extra=.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
FIELDS = "dispatch_fields"  # the record attribute holding a message's key=value pairs
# Marks a record the filter has cleaned; an object no extra= can pass.
_DONE = "_dispatch_filtered"
_DONE_MARK = object()

# A %-conversion of a message template, and the `key=` right before one.
_SPEC = re.compile(
    r"%(?:\((\w+)\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])"
)
_KEY_BEFORE = re.compile(r"(\w[\w.]*)=$")
# A number in E.164 (how the hub logs every number it dials), and the fields that hold one.
_E164 = re.compile(r"\+\d{4,11}(\d{4})\b")
_PHONE_KEYS = frozenset({"phone", "to", "from", "from_"})
_phone_mode: Literal["full", "last4"] = "full"


def mask_phones(text: str) -> str:
    """``text`` with every E.164 number masked to its last four digits, if so configured."""
    if _phone_mode == "full":
        return text
    return _E164.sub(lambda m: "+" + "*" * (len(m.group(0)) - 5) + m.group(1), text)


def _mask_phone_field(value: object) -> object:
    if _phone_mode == "full" or not isinstance(value, str) or len(value) <= 4:
        return value
    if _E164.fullmatch(value):
        return mask_phones(value)
    if value.startswith("+*"):
        return value  # masked already, as E.164
    return "*" * (len(value) - 4) + value[-4:]  # as given (a skipped record's): any form


def fields_of(template: object, args: object) -> dict[str, Any]:
    """The ``key=value`` pairs a message template spells (``"dial.start record=%s"``), with
    the values as given to it."""
    if not isinstance(template, str) or not isinstance(args, tuple):
        return {}
    fields: dict[str, Any] = {}
    index = 0
    for match in _SPEC.finditer(template):
        if match.group(2) == "%":
            continue
        if index >= len(args):
            break
        value, index = args[index], index + 1
        key = _KEY_BEFORE.search(template, 0, match.start())
        if key is not None:
            fields[key.group(1)] = _field_value(value)
    return fields


def _field_value(value: object) -> object:
    """A JSON-ready field value, with no secret and, if so configured, no full number."""
    if isinstance(value, int | float | bool) or value is None:
        return value
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # a broken __str__ must not make the log call raise
        text = f"<{type(value).__name__}>"
    return mask_phones(redact(text))


class SecretFilter(logging.Filter):
    """Takes the registered secrets out of a record before any formatter sees it.

    The arguments are redacted before the message is built: websockets logs a frame shortened
    to its beginning and end, so a long key would otherwise show in part."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE, None) is _DONE_MARK:
            return True  # done already (the record passed another handler)
        setattr(record, _DONE, _DONE_MARK)
        if record.args:
            args = record.args
            if isinstance(args, tuple):
                record.args = tuple(_redact_arg(arg) for arg in args)
            elif isinstance(args, dict):  # logger.info("%(key)s", {...})
                record.args = {key: _redact_arg(value) for key, value in args.items()}
        fields = {} if _foreign(record.name) else fields_of(record.msg, record.args)
        for key in fields.keys() & _PHONE_KEYS:
            fields[key] = _mask_phone_field(fields[key])
        # extra= fields: made JSON-ready and clean here, whatever their type.
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and key not in (FIELDS, _DONE):
                record.__dict__[key] = _field_value(value)
        record.__dict__[FIELDS] = fields
        if _SECRETS.pattern is None and _phone_mode == "full":
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: logging reports those, without the secrets
            message = f"{record.msg} {record.args!r}"
        record.msg = mask_phones(redact(message))
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_phones(redact(record.exc_text))
        if record.stack_info:
            record.stack_info = mask_phones(redact(record.stack_info))
        return True


_SECRET_FILTER = SecretFilter()


def _redact_arg(arg: object) -> object:
    if isinstance(arg, str):
        return redact(arg)
    if isinstance(arg, bytes | bytearray):
        text = bytes(arg).decode("utf-8", "surrogateescape")
        if _SECRETS.found_in(text):
            return redact(text).encode("utf-8", "surrogateescape")
        return arg
    # A websockets Frame (a dataclass holding the payload in `data`): redact the payload
    # itself, since the frame's str() shows it shortened.
    data = getattr(arg, "data", None)
    framed = dataclasses.is_dataclass(arg) and not isinstance(arg, type)
    if framed and isinstance(data, bytes | bytearray | memoryview):
        text = bytes(data).decode("utf-8", "surrogateescape")
        if _SECRETS.found_in(text):
            clean = redact(text).encode("utf-8", "surrogateescape")
            try:
                return dataclasses.replace(arg, data=clean)  # type: ignore[type-var]
            except (TypeError, ValueError):
                return redact(str(arg))
    return arg


def _syslog_priority(level: int) -> int:
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    if level >= logging.INFO:
        return 6
    return 7


def _foreign(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in _FOREIGN)


def _with_priority(text: str, record: logging.LogRecord) -> str:
    # Every line of a traceback too, or journald would file them at the default priority.
    prefix = f"<{_syslog_priority(record.levelno)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


class _TextFormatter(logging.Formatter):
    def __init__(self, *, journald: bool) -> None:
        time = "" if journald else "%(asctime)s "
        super().__init__(time + "%(levelname)-7s %(message)s", "%H:%M:%S")
        self.journald = journald

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not _foreign(record.name):
            return super().formatMessage(record)
        message = record.message
        record.message = f"{record.name} {message}"
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return _with_priority(text, record) if self.journald else text


class _JsonFormatter(logging.Formatter):
    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if _foreign(record.name):
            event: str | None = record.name
        else:
            event = record.msg.split(" ", 1)[0] if isinstance(record.msg, str) else None
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "event": event,
            "message": message,
        }
        # The message's key=value pairs, then extra= fields; neither hides the above.
        extra = {k: v for k, v in record.__dict__.items()
                 if k not in _STANDARD and k not in (FIELDS, _DONE)}  # fmt: skip
        for key, value in {**record.__dict__.get(FIELDS, {}), **extra}.items():
            payload.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = record.exc_text
        # The values are clean already; the whole line once more, in case one was not.
        text = mask_phones(redact(json.dumps(payload, default=str)))
        return _with_priority(text, record) if self.journald else text


def under_journald(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM`` is
    ``device:inode`` of it; a child whose output was redirected inherits the variable, not
    the stream)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False


class _Stdout:
    """Whatever ``sys.stdout`` is when a line is written: a live progress display swaps it
    for a proxy that prints above itself."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def configure_logging(
    level: str = "INFO",
    format: Literal["text", "json"] = "text",
    phone: Literal["full", "last4"] = "full",
) -> None:
    global _phone_mode
    _phone_mode = phone
    journald = under_journald(sys.stdout)
    handler: logging.StreamHandler[Any] = logging.StreamHandler(_Stdout())
    if format == "json":
        handler.setFormatter(_JsonFormatter(journald=journald))
    else:
        handler.setFormatter(_TextFormatter(journald=journald))
    handler.addFilter(_SECRET_FILTER)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, when_debugging in _THIRD_PARTY.items():
        quiet = when_debugging if root.level <= logging.DEBUG else logging.WARNING
        logging.getLogger(name).setLevel(max(quiet, root.level))
    quiet_http_logs()


def quiet_http_logs() -> None:
    """httpx logs every request's full URL at INFO (and httpcore its steps at DEBUG): a URL
    may carry a token in its query, and no secret may reach a log at any level. Their
    warnings still come through. Called by whatever opens an HTTP client, unless the
    application set those loggers' levels itself."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
