"""Alembic environment. The store runs migrations programmatically on a connection it passes in
``config.attributes["connection"]``; ``alembic`` on the command line works too, with
``sqlalchemy.url`` set in its ini or ``-x url=...``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from dispatch.store.models import metadata

config = context.config


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copes
        transactional_ddl=True,  # all-or-nothing on PostgreSQL and (see the store) SQLite
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    engine = engine_from_config(
        {"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        _run(conn)
