"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dispatch.store import Store


@pytest.fixture
async def migrated_store(any_store_url: str) -> AsyncIterator[Store]:
    """A migrated store on every backend, its writer not running: the CLI's situation."""
    store = Store(any_store_url)
    await store.open()
    yield store
    await store.aclose()
