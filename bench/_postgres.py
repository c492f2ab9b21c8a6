"""A scratch PostgreSQL database per benchmark run, created beside a given one and dropped after."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

SERVER = os.environ.get("DISPATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class Unreachable(Exception):
    """No PostgreSQL server answers at the given URL."""


def _dsn(url: str) -> str:
    return url.replace("postgresql://", "postgres://", 1)


@asynccontextmanager
async def scratch_database(server: str = SERVER) -> AsyncIterator[str]:
    """Yield the URL of a new, empty database on ``server``'s cluster; drop it afterwards."""
    try:
        admin = await asyncpg.connect(_dsn(server))
    except (OSError, asyncpg.PostgresError) as exc:
        raise Unreachable(f"PostgreSQL at {make_url(server)!r} is not reachable: {exc}") from exc
    name = f"dispatch_bench_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(_dsn(url))
