"""The durable inbox against the store: one atomic insert-if-absent per batch, so an update
is recorded (and handled) once even when replicas sharing the store receive it together."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import anyio
import attrs
import pytest

from agenthost.backends.channel import HostServices
from agenthost.channels.telegram.inbox import CURSOR, INBOX, OFFSET_KEY, SEEN, Inbox, update_key
from agenthost.stores.base import Store
from agenthost.stores.memory import MemoryStore
from agenthost.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@attrs.define
class Services:
    store: Store

    def now(self) -> float:
        return time.time()


def make_inbox(store: Store, handled: list[int]) -> Inbox:
    async def handle(update: Mapping[str, Any], parsed: Any) -> None:
        handled.append(update["update_id"])

    return Inbox(
        cast(HostServices, Services(store)),
        channel="telegram",
        handle=handle,
        chat_of=lambda update: update["chat"],
        dedupe_seconds=3600.0,
        max_concurrent_chats=4,
    )


def update(update_id: int, chat: int = 1) -> tuple[int, Mapping[str, Any], Any]:
    return (update_id, {"update_id": update_id, "chat": chat}, None)


async def drain(*inboxes: Inbox) -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            for inbox in inboxes:
                tasks.start_soon(inbox.run)
            for inbox in inboxes:
                await inbox.wait_idle()
            tasks.cancel_scope.cancel()


async def test_replicas_receiving_the_same_updates_record_each_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "state.db"
    stores = [SQLiteStore(path) for _ in range(3)]
    for store in stores:
        await store.open()
    handled: list[int] = []
    inboxes = [make_inbox(store, handled) for store in stores]
    counts: list[int] = []
    batch = [update(i, chat=i % 3) for i in range(100, 130)]

    async def accept(inbox: Inbox) -> None:
        counts.append(await inbox.accept(batch, offset=130))

    try:
        async with anyio.create_task_group() as tasks:
            for inbox in inboxes:
                tasks.start_soon(accept, inbox)
        assert sum(counts) == 30  # each update recorded by exactly one replica
        await drain(*inboxes)
        assert sorted(handled) == list(range(100, 130))
        assert await stores[0].list_channel_records("telegram", INBOX) == []
        cursor = await stores[0].get_channel_record("telegram", CURSOR, OFFSET_KEY)
        assert cursor is not None and cursor.value == {"offset": 130}
    finally:
        for store in stores:
            await store.close()


async def test_a_handled_update_delivered_again_is_not_handled_again() -> None:
    store = MemoryStore()
    handled: list[int] = []
    inbox = make_inbox(store, handled)
    assert await inbox.accept([update(7)], offset=8) == 1
    await drain(inbox)
    assert handled == [7]
    assert await store.get_channel_record("telegram", SEEN, update_key(7)) is not None
    # The inbox record is gone; the mark stays, so a redelivery records nothing.
    assert await inbox.accept([update(7), update(8)], offset=9) == 1
    await drain(inbox)
    assert handled == [7, 8]
    assert await store.list_channel_records("telegram", INBOX) == []
    # A batch of seen updates still moves the cursor.
    assert await inbox.accept([update(8)], offset=10) == 0
    assert await inbox.load_offset() == 10
