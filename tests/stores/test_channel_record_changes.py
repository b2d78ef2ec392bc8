"""``change_channel_record``: a read-modify-write of one channel record, atomic on every
store, and across replicas on PostgreSQL (the Responses channel's conversation counter)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio
import pytest

from agenthost.stores.base import ChannelRecord, Store
from agenthost.stores.sqlite import SQLiteStore
from tests.host_process import REPO
from tests.postgres_fixture import postgres_schema

pytestmark = pytest.mark.anyio


def counter(value: int) -> ChannelRecord:
    return ChannelRecord("responses", "conversation", "c1", {"next": value}, owner="alice")


def item(number: int) -> ChannelRecord:
    return ChannelRecord("responses", "item", f"c1:{number:04d}", {"n": number}, owner="alice")


def append_one(record: ChannelRecord | None) -> Sequence[ChannelRecord]:
    """The conversation's next item and its counter moved past it; nothing once deleted."""
    if record is None:
        return []
    number = int(record.value["next"])
    return [counter(number + 1), item(number)]


async def test_a_change_puts_what_it_makes_of_the_record(store: Store) -> None:
    assert await store.change_channel_record("responses", "conversation", "c1", append_one) == []
    assert await store.get_channel_record("responses", "conversation", "c1") is None
    await store.put_channel_records([counter(0)])
    made = await store.change_channel_record("responses", "conversation", "c1", append_one)
    assert made == [counter(1), item(0)]
    stored = await store.get_channel_record("responses", "conversation", "c1")
    assert stored is not None and stored.value == {"next": 1}
    assert [r.key for r in await store.list_channel_records("responses", "item")] == ["c1:0000"]


async def test_concurrent_changes_of_one_record_never_interleave(store: Store) -> None:
    await store.put_channel_records([counter(0)])
    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(
                store.change_channel_record, "responses", "conversation", "c1", append_one
            )
    stored = await store.get_channel_record("responses", "conversation", "c1")
    assert stored is not None and stored.value == {"next": 20}
    items = await store.list_channel_records("responses", "item", limit=100)
    assert [r.value["n"] for r in items] == list(range(20))


async def test_changes_on_every_replica_count_each_append_once(anyio_backend: str) -> None:
    from agenthost.stores.postgres import PostgresStore

    with postgres_schema() as (dsn, schema):
        replicas = [PostgresStore(dsn, schema=schema, pool_size=2) for _ in range(3)]
        try:
            await replicas[0].put_channel_records([counter(0)])
            async with anyio.create_task_group() as tasks:
                for n in range(30):
                    tasks.start_soon(
                        replicas[n % 3].change_channel_record,
                        "responses",
                        "conversation",
                        "c1",
                        append_one,
                    )
            stored = await replicas[1].get_channel_record("responses", "conversation", "c1")
            items = await replicas[2].list_channel_records("responses", "item", limit=100)
        finally:
            for replica in replicas:
                await replica.close()
    assert stored is not None and stored.value == {"next": 30}
    assert [r.value["n"] for r in items] == list(range(30))


async def test_a_delete_on_another_replica_waits_for_a_change_in_flight(
    anyio_backend: str,
) -> None:
    from agenthost.stores.postgres import PostgresStore

    def slow_append(record: ChannelRecord | None) -> Sequence[ChannelRecord]:
        time.sleep(0.5)  # runs in the store's worker thread, the record locked
        return append_one(record)

    with postgres_schema() as (dsn, schema):
        a, b = PostgresStore(dsn, schema=schema), PostgresStore(dsn, schema=schema)
        try:
            await a.put_channel_records([counter(0)])
            await b.open()

            async def delete_conversation() -> None:
                await anyio.sleep(0.2)  # while the change holds the record
                # The conversation first, then its items (what the Responses channel does).
                await b.delete_channel_records("responses", "conversation", prefix="c1")
                await b.delete_channel_records("responses", "item", prefix="c1:")

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(
                    a.change_channel_record, "responses", "conversation", "c1", slow_append
                )
                tasks.start_soon(delete_conversation)
            left = await a.get_channel_record("responses", "conversation", "c1")
            items = await a.list_channel_records("responses", "item")
        finally:
            await a.close()
            await b.close()
    assert left is None and items == []  # deleted after the change: nothing resurrected


async def test_changes_from_processes_sharing_a_sqlite_file_count_each_append_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    # Processes, not store objects in this one: here a store may run a whole read-modify-
    # write on the event loop without a pause, which would hide a lock kept in the object.
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.put_channel_records([counter(0)])
        start = str(time.time() + 3.0)  # all three have imported and opened by then
        command = [sys.executable, "-m", "tests.stores.sqlite_file_changer", str(path), "40", start]
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                for _ in range(3):
                    tasks.start_soon(partial(anyio.run_process, command, cwd=REPO, check=True))
        stored = await store.get_channel_record("responses", "conversation", "c1")
        items = await store.list_channel_records("responses", "item", limit=200)
    finally:
        await store.close()
    assert stored is not None and stored.value == {"next": 120}
    assert [r.value["n"] for r in items] == list(range(120))
