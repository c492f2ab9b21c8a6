"""Run the Alembic migrations shipped with the package.

Alembic is imported only when there is something to migrate: a start on a store that is up to
date (the usual case) reads its version and goes on, which spares ``dispatch run`` the import of
Alembic and the loading of every migration script.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["SHIPPED_HEAD", "head_revision", "migrations_dir", "upgrade_connection"]

# The newest revision in migrations/versions (a test keeps the two in agreement).
SHIPPED_HEAD = "0010"


def migrations_dir() -> Path:
    """Where the Alembic environment is: inside an installed wheel it is ``dispatch/_migrations``;
    in a source checkout (editable install) it is ``migrations/`` at the repository root."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the Alembic migrations directory is missing from the installation")


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind a synchronous ``connection`` (use via ``run_sync``)."""
    if revision == "head" and current_revision(connection) == SHIPPED_HEAD:
        return
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


def current_revision(connection: Connection) -> str | None:
    """The schema revision of the database (None for one Alembic never touched)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
    found = list(versions)
    return found[0] if len(found) == 1 else None


def head_revision() -> str:
    """The newest schema revision this installation ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise FileNotFoundError("no migrations found")
    return head
