"""Shared fixtures: the anyio backend, store URLs for every backend, a fast test hub."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "DISPATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
MARIADB_HOST = os.environ.get("DISPATCH_TEST_MARIADB_HOST", "127.0.0.1")
REQUIRE_SERVICES = os.environ.get("DISPATCH_REQUIRE_SERVICES") == "1"


@pytest.fixture
def anyio_backend() -> str:
    # SQLAlchemy's async engine runs on asyncio only.
    return "asyncio"


def service_unavailable(name: str, error: BaseException) -> None:
    """Skip a test whose service is down, except in CI, where that is a failure."""
    message = f"{name} is not reachable: {type(error).__name__}: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (DISPATCH_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dispatch.db'}"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import asyncpg  # type: ignore[import-untyped]

    admin = POSTGRES_ADMIN_URL.replace("postgresql://", "postgres://", 1)
    name = f"dispatch_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(admin)
    except (OSError, asyncpg.PostgresError) as exc:
        service_unavailable("PostgreSQL", exc)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def mariadb_url() -> AsyncIterator[str]:
    """A fresh, empty MariaDB database for one test (root, no password), dropped afterwards."""
    import aiomysql  # type: ignore[import-untyped]

    name = f"dispatch_test_{uuid.uuid4().hex[:12]}"

    async def execute(statement: str) -> None:
        conn = await aiomysql.connect(host=MARIADB_HOST, port=3306, user="root", password="")
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(statement)
        finally:
            conn.close()

    try:
        await execute(f"CREATE DATABASE `{name}`")
    except OSError as exc:
        service_unavailable("MariaDB", exc)
    except aiomysql.OperationalError as exc:
        service_unavailable("MariaDB", exc)
    try:
        yield f"mysql://root@{MARIADB_HOST}:3306/{name}"
    finally:
        await execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def sql_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def any_sql_url(sql_backend: str, request: pytest.FixtureRequest) -> str:
    """An empty database of every backend the SQL strategy reads."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}.get(sql_backend, "mariadb_url")
    return str(request.getfixturevalue(fixture))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def any_store_url(store_backend: str, request: pytest.FixtureRequest) -> str:
    """The same test against every supported store backend."""
    fixture = "sqlite_url" if store_backend == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def repo_root() -> Iterator[Path]:
    return Path(__file__).resolve().parent.parent


async def fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    """Read a store as an outside observer would: a fresh engine, no shared connection."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from dispatch.store import async_url

    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(query))]
    finally:
        await engine.dispose()
