"""The shared durable inbox on its own: lanes keep order, a failing arrival is dropped
without blocking its lane, marks de-duplicate, unmarked arrivals are always recorded,
and a full inbox refuses instead of queueing."""

from __future__ import annotations

import time
from typing import Any, cast

import anyio
import anyio.lowlevel
import attrs
import pytest

from agenthost.backends.channel import HostServices
from agenthost.backends.inbox import INBOX, Arrival, DurableInbox
from agenthost.stores.base import ChannelRecord, Store
from agenthost.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


@attrs.define
class Services:
    store: Store

    def now(self) -> float:
        return time.time()


def arrival(n: int, lane: str, *, marked: bool = True) -> Arrival:
    key = f"{n:020d}"
    return Arrival(key, {"n": n}, lane, n, mark=key if marked else None)


async def handled_by(inbox: DurableInbox, handled: list[int]) -> None:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(inbox.run)
            await anyio.lowlevel.checkpoint()
            await inbox.wait_idle()
            tasks.cancel_scope.cancel()


async def test_lanes_keep_order_and_a_failure_does_not_block_its_lane() -> None:
    store = MemoryStore()
    await store.open()
    handled: list[int] = []

    async def handle(n: int) -> None:
        if n == 2:
            raise ValueError("poisonous")
        handled.append(n)

    inbox = DurableInbox(
        cast(HostServices, Services(store)),
        channel="test",
        label="test arrival",
        handle=handle,
        dedupe_seconds=60,
        max_concurrent_lanes=4,
    )
    new = await inbox.record([arrival(1, "a"), arrival(2, "a"), arrival(3, "a"), arrival(4, "b")])
    assert [a.item for a in new] == [1, 2, 3, 4]
    await handled_by(inbox, handled)
    assert [n for n in handled if n != 4] == [1, 3]
    assert 4 in handled
    # Handled and failed arrivals alike leave nothing in the inbox.
    assert await store.list_channel_records("test", INBOX) == []
    # The marks stay: a redelivery is not recorded again; an unmarked arrival always is.
    again = await inbox.record([arrival(1, "a"), arrival(5, "a", marked=False)])
    assert [a.item for a in again] == [5]


async def test_a_full_inbox_says_so_and_recovery_requeues_what_is_stored() -> None:
    store = MemoryStore()
    await store.open()
    handled: list[int] = []

    async def handle(n: int) -> None:
        handled.append(n)

    def make() -> DurableInbox:
        return DurableInbox(
            cast(HostServices, Services(store)),
            channel="test",
            label="test arrival",
            handle=handle,
            dedupe_seconds=60,
            max_concurrent_lanes=1,
            max_pending=2,
        )

    first = make()
    await first.record([arrival(1, "a"), arrival(2, "b")])
    assert first.full and first.knows(f"{1:020d}")
    # The process "stops" before handling: a new one finds both in the store.
    second = make()
    await store.put_channel_records([ChannelRecord("test", INBOX, "zz-unreadable", {})])

    def restore(record: ChannelRecord) -> Arrival | None:
        n: Any = record.value.get("n")
        return Arrival(record.key, record.value, "lane", n) if isinstance(n, int) else None

    assert await second.recover(restore) == 2
    await handled_by(second, handled)
    assert handled == [1, 2]
    # What restore could not read stays for an operator.
    assert [r.key for r in await store.list_channel_records("test", INBOX)] == ["zz-unreadable"]
