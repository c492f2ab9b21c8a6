"""First-contact mistakes, caught before anything starts, each as one line naming the fix.

The command line runs :func:`preflight` before ``run`` and ``check``: what it finds is a
configuration error (exit code 2, which systemd's ``RestartPreventExitStatus=2`` does not
retry), where the same mistake would otherwise surface as a driver's traceback or as a daemon
that quietly does nothing. :func:`missing_extra` turns a driver's ``ModuleNotFoundError`` into
the ``pip install`` that fixes it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from ..config import CsvStrategyConfig, Settings, store_url
from ..errors import ConfigError

__all__ = ["EXTRAS", "STORE_HINT", "missing_extra", "preflight"]

# The fix to name with an unreachable store, whichever command met it.
STORE_HINT = (
    "is the database running and reachable, and is [store] url (or DISPATCH_STORE__URL) right?"
)

# Driver module -> (what it is, the extra that installs it).
EXTRAS = {
    "asyncpg": ("the PostgreSQL driver", "postgres"),
    "aiomysql": ("the MySQL/MariaDB driver", "mysql"),
}


def preflight(settings: Settings, base: Path, *, sources: bool = True) -> None:
    """Raise :class:`ConfigError` for a SQLite store in a directory that does not exist and,
    with ``sources``, a CSV source whose file does not exist. A CSV file that goes missing
    later, while the daemon runs (an editor's save in progress), is waited for instead
    (``csv.missing``); one missing at start is a wrong path."""
    url = make_url(store_url(settings, base))
    database = url.database
    if url.get_backend_name() == "sqlite" and database and database != ":memory:":
        directory = Path(database).parent
        if not directory.is_dir():
            raise ConfigError(
                f"store.url: the directory {directory} for the SQLite store does not exist "
                "(create it, or point [store] url at a file in an existing directory)"
            )
    for i, strategy in enumerate(settings.strategies if sources else ()):
        if not isinstance(strategy, CsvStrategyConfig):
            continue
        path = strategy.path if strategy.path.is_absolute() else base / strategy.path
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(
                f"strategies[{i}].path: the CSV file {path} {what} (fix the path; a relative "
                f"one follows the configuration file's directory, {base})"
            )


def missing_extra(exc: BaseException) -> str | None:
    """The one-line fix for a missing database driver behind ``exc`` (also inside exception
    groups), or None if that is not what ``exc`` is."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := missing_extra(inner)) is not None:
                return found
        return None
    if isinstance(exc, ModuleNotFoundError) and exc.name in EXTRAS:
        what, extra = EXTRAS[exc.name]
        return (
            f"{what} is not installed (No module named {exc.name!r}): "
            f"pip install 'pinecall-dispatch[{extra}]'"
        )
    if exc.__cause__ is not None:
        return missing_extra(exc.__cause__)
    return None
