"""The shared durable inbox on its own: lanes keep order, a failing arrival is dropped
without blocking its lane, marks de-duplicate, unmarked arrivals are always recorded, a
full inbox refuses instead of queueing; recovery takes only what a dead (or stopped)
process owned, each arrival by one replica; a stop lets the arrival in hand finish."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import attrs
import pytest

from agenthost.backends.channel import HostServices
from agenthost.backends.inbox import INBOX, Arrival, DurableInbox
from agenthost.stores.base import ChannelRecord, Store
from agenthost.stores.memory import MemoryStore
from agenthost.stores.sqlite import SQLiteStore
from tests.postgres_fixture import postgres_schema

pytestmark = pytest.mark.anyio


@attrs.define
class Services:
    store: Store
    clock: float | None = None  # None: the wall clock

    def now(self) -> float:
        return time.time() if self.clock is None else self.clock


def restore(record: ChannelRecord) -> Arrival | None:
    n: Any = record.value.get("n")
    return Arrival(record.key, record.value, "lane", n) if isinstance(n, int) else None


def make_inbox(
    services: Services,
    handle: Callable[[Any], Any],
    *,
    lanes: int = 4,
    max_pending: int | None = None,
) -> DurableInbox:
    return DurableInbox(
        cast(HostServices, services),
        channel="test",
        label="test arrival",
        handle=handle,
        restore=restore,
        dedupe_seconds=60,
        max_concurrent_lanes=lanes,
        max_pending=max_pending,
        owner_lease_seconds=15,
    )


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

    inbox = make_inbox(Services(store), handle)
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

    services = Services(store, clock=1000.0)
    first = make_inbox(services, handle, lanes=1, max_pending=2)
    await first.record([arrival(1, "a"), arrival(2, "b")])
    assert first.full and first.knows(f"{1:020d}")
    # The process dies before handling: once its lease lapses, a new one finds both.
    services.clock = 1016.0
    second = make_inbox(services, handle, lanes=1, max_pending=2)
    await store.put_channel_records([ChannelRecord("test", INBOX, "zz-unreadable", {})])
    assert await second.recover() == 2
    await handled_by(second, handled)
    assert handled == [1, 2]
    # What restore could not read stays for an operator.
    assert [r.key for r in await store.list_channel_records("test", INBOX)] == ["zz-unreadable"]


class ValueCountingStore(MemoryStore):
    """The memory store, counting the inbox records whose values it hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.values_read = 0

    async def list_channel_records(
        self,
        channel: str,
        kind: str,
        *,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> list[ChannelRecord]:
        records = await super().list_channel_records(
            channel, kind, prefix=prefix, after=after, limit=limit, descending=descending
        )
        if kind == INBOX:
            self.values_read += len(records)
        return records

    async def get_channel_record(self, channel: str, kind: str, key: str) -> ChannelRecord | None:
        record = await super().get_channel_record(channel, kind, key)
        if kind == INBOX and record is not None:
            self.values_read += 1
        return record


async def test_recovery_pages_through_owners_and_reads_only_the_values_it_takes() -> None:
    """Every replica sweeps every few seconds: a sweep that takes nothing reads no values."""
    store = ValueCountingStore()
    await store.open()
    handled: list[int] = []

    async def handle(n: int) -> None:
        handled.append(n)

    services = Services(store, clock=1000.0)
    first = make_inbox(services, handle)
    await first.record([arrival(n, "a") for n in range(1, 6)])
    second = make_inbox(services, handle)
    services.clock = 1005.0
    assert await second.recover(page=2) == 0  # the first lives
    assert store.values_read == 0
    services.clock = 1016.0  # the first died at 1000: its lease lapsed at 1015
    assert await second.recover(page=2) == 5
    assert store.values_read == 5  # each taken record's, once, by its compare-and-set
    await handled_by(second, handled)
    assert handled == [1, 2, 3, 4, 5]


# --- owners and take-over (rule 6), stop (rule 7) ---------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def replica_stores(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[Callable[[], Store]]:
    """Clients of one store as separate replicas would hold them: one shared object for
    memory (one process), separate stores on one SQLite file or one PostgreSQL schema."""
    opened: list[Store] = []

    async def serve(make: Callable[[], Store]) -> AsyncIterator[Callable[[], Store]]:
        clients: list[Store] = []

        def client() -> Store:
            made = make()
            clients.append(made)
            return made

        try:
            yield client
        finally:
            for made in clients:
                await made.close()

    if request.param == "memory":
        shared = MemoryStore()
        await shared.open()
        opened.append(shared)
        async for factory in serve(lambda: shared):
            yield factory
        return
    if request.param == "sqlite":
        path = tmp_path / "state.db"
        async for factory in serve(lambda: SQLiteStore(path)):
            yield factory
        return
    from agenthost.stores.postgres import PostgresStore

    with postgres_schema() as (dsn, schema):
        async for factory in serve(lambda: PostgresStore(dsn, schema=schema, pool_size=2)):
            yield factory


async def replica(
    stores: Callable[[], Store], clock: float, handle: Callable[[Any], Any], *, lanes: int = 4
) -> tuple[DurableInbox, Services]:
    store = stores()
    await store.open()
    services = Services(store, clock=clock)
    return make_inbox(services, handle, lanes=lanes), services


async def test_recovery_leaves_a_live_owners_arrivals_and_takes_a_dead_ones(
    replica_stores: Callable[[], Store],
) -> None:
    async def handle(n: int) -> None:
        pass

    a, a_clock = await replica(replica_stores, 1000.0, handle)
    b, b_clock = await replica(replica_stores, 1000.0, handle)
    await a.record([arrival(1, "x"), arrival(2, "y")])  # a handles them (not run here)
    # A replica starting or taking over polling meanwhile must not take what a handles:
    # that would answer the arrivals twice.
    b_clock.clock = 1010.0
    assert await b.recover() == 0
    assert not b.knows(f"{1:020d}")
    # a renews its lease (as its run loop does), and lives on past the first lease.
    a_clock.clock = 1012.0
    assert await a.recover() == 0  # its own arrivals are not "recovered" from itself
    b_clock.clock = 1020.0
    assert await b.recover() == 0
    # a dies: its lease lapses, and b takes both, moving them to itself.
    b_clock.clock = 1028.0
    assert await b.recover() == 2
    assert b.knows(f"{1:020d}") and b.knows(f"{2:020d}")
    records = await b_clock.store.list_channel_records("test", INBOX)
    assert {r.owner for r in records} == {b.owner}


async def test_replicas_recovering_at_once_take_each_arrival_exactly_once(
    replica_stores: Callable[[], Store],
) -> None:
    async def handle(n: int) -> None:
        pass

    dead, _ = await replica(replica_stores, 1000.0, handle)
    await dead.record([arrival(n, f"lane-{n % 3}") for n in range(12)])
    survivors = [await replica(replica_stores, 1100.0, handle) for _ in range(3)]
    counts: list[int] = []

    async def recover(inbox: DurableInbox) -> None:
        counts.append(await inbox.recover())

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            for inbox, _ in survivors:
                tasks.start_soon(recover, inbox)
    # One replica may take the dead one's lease first and the rest then find it held,
    # or (on later sweeps) none left: either way no arrival is taken twice.
    taken = [n for inbox, _ in survivors for n in range(12) if inbox.knows(f"{n:020d}")]
    assert sorted(taken) == list(range(12))
    assert sum(counts) == 12
    # A later sweep by anyone finds nothing left to take: every record has a live owner.
    for inbox, _ in survivors:
        assert await inbox.recover() == 0


async def test_a_stop_lets_the_arrival_in_hand_finish_and_hands_the_rest_over(
    replica_stores: Callable[[], Store],
) -> None:
    started, release = anyio.Event(), anyio.Event()
    handled: list[tuple[str, int]] = []

    def handler(name: str) -> Callable[[int], Any]:
        async def handle(n: int) -> None:
            if n == 1:
                started.set()
                await release.wait()
            handled.append((name, n))

        return handle

    a, services = await replica(replica_stores, 1000.0, handler("a"), lanes=1)
    b, _ = await replica(replica_stores, 1000.0, handler("b"))
    await a.record([arrival(1, "x"), arrival(2, "x"), arrival(3, "x")])
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(a.run)
            await started.wait()
            stopped = anyio.Event()

            async def stop() -> None:
                await a.stop()
                stopped.set()

            tasks.start_soon(stop)
            await anyio.sleep(0.05)
            assert not stopped.is_set()  # the arrival in hand is not abandoned
            release.set()
            await stopped.wait()
            tasks.cancel_scope.cancel()
    assert handled == [("a", 1)]
    left = await services.store.list_channel_records("test", INBOX)
    assert [r.key for r in left] == [f"{2:020d}", f"{3:020d}"]
    # The stop gave the lease up: another replica takes the rest at once, not a lease later.
    assert await b.recover() == 2
    await handled_by(b, [])
    assert sorted(handled) == [("a", 1), ("b", 2), ("b", 3)]
    assert await services.store.list_channel_records("test", INBOX) == []
