"""Run the Alembic migrations shipped with the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

__all__ = ["head_revision", "migrations_dir", "upgrade_connection"]


def migrations_dir() -> Path:
    """Where the Alembic environment is: inside an installed wheel it is ``dispatch/_migrations``;
    in a source checkout (editable install) it is ``migrations/`` at the repository root."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the Alembic migrations directory is missing from the installation")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind a synchronous ``connection`` (use via ``run_sync``)."""
    command.upgrade(alembic_config(connection), revision)


def head_revision() -> str:
    """The newest schema revision this installation ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise FileNotFoundError("no migrations found")
    return head
