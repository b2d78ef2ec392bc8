"""The stores under test: every contract test runs once per implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agenthost.stores.base import Store
from agenthost.stores.memory import MemoryStore
from agenthost.stores.sqlite import SQLiteStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    else:
        made = SQLiteStore(tmp_path / "state" / "agenthost.db")
    await made.open()
    try:
        yield made
    finally:
        await made.close()
