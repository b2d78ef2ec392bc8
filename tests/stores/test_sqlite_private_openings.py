"""A turn whose new session only it can name (``opening`` rule 5) opens on a read: on the
SQLite store that read takes no write lock, so it goes on while another process (here a
plain connection to the same file) holds the lock, where a write transaction would wait
for it. The turn's save then waits for the lock like any write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from agenthost.stores.sqlite import SQLiteStore
from tests.stores.test_store_contract import (
    ALICE,
    known,
    opened_privately_and_saved,
    private_fork_for,
)

pytestmark = pytest.mark.anyio


async def test_a_private_opening_reads_while_another_process_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await known(store, ALICE)
        other.execute("BEGIN IMMEDIATE")  # the other process's write transaction
        try:
            # Well inside the store's 5 s busy timeout: a write would still be waiting.
            with anyio.fail_after(2.0):
                opened = await store.open_turn(private_fork_for(ALICE, "r1", "resp_1"))
        finally:
            other.execute("ROLLBACK")
        await opened_privately_and_saved(store, opened)
    finally:
        other.close()
        await store.close()
