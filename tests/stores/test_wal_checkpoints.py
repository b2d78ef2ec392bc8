"""WAL checkpoints happen in a thread of their own: the store's commits never checkpoint
(no fsync stall inside a request), yet what they wrote reaches the database file."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agenthost.stores.base import ChannelRecord
from agenthost.stores.sqlite import SQLiteStore
from agenthost.stores.wal_checkpoints import EVERY_COMMITS

pytestmark = pytest.mark.anyio


async def test_commits_leave_checkpoints_to_the_checkpoint_thread(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        before = path.stat().st_size
        payload = {"text": "x" * 2000}
        for n in range(EVERY_COMMITS + 10):  # one commit each: past the checkpoint mark
            await store.put_channel_records([ChannelRecord("test", "item", f"k{n:04}", payload)])
        with anyio.fail_after(10):
            while path.stat().st_size <= before + 100 * 2000:
                await anyio.sleep(0.02)
    finally:
        await store.close()
    assert len(await SQLiteStore(path).list_channel_records("test", "item", limit=1000)) == (
        EVERY_COMMITS + 10
    )
