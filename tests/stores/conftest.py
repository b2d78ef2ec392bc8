"""The stores under test: every contract test runs once per implementation.

PostgreSQL runs when ``AGENTHOST_TEST_POSTGRES`` names a server (``make test`` sets it):
each test gets a schema of its own, dropped afterwards. Unset, the PostgreSQL cases skip;
set but unreachable, they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agenthost.stores.base import Store
from agenthost.stores.memory import MemoryStore
from agenthost.stores.sqlite import SQLiteStore
from tests.postgres_fixture import postgres_schema


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "state" / "agenthost.db")
    else:
        from agenthost.stores.postgres import PostgresStore

        with postgres_schema() as (dsn, schema):
            made = PostgresStore(dsn, schema=schema)
            await made.open()
            try:
                yield made
            finally:
                await made.close()
        return
    await made.open()
    try:
        yield made
    finally:
        await made.close()
