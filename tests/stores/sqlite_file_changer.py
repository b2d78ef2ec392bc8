"""One process of the shared-file change test: ``python -m tests.stores.sqlite_file_changer
PATH COUNT START`` appends COUNT items through ``change_channel_record`` on the SQLite file
PATH, beginning at the wall-clock time START (so the processes overlap)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

from agenthost.stores.sqlite import SQLiteStore
from tests.stores.test_channel_record_changes import append_one


async def main(path: Path, count: int, start: float) -> None:
    store = SQLiteStore(path)
    await store.open()
    try:
        await anyio.sleep(max(0.0, start - time.time()))
        for _ in range(count):
            await store.change_channel_record("responses", "conversation", "c1", append_one)
    finally:
        await store.close()


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
