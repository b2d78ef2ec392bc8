"""Contract: session forks and channel records, on every store (fixture in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agenthost.sansio_core import leases
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import MultitaskStrategy
from agenthost.stores.base import ChannelRecord, Store
from agenthost.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


def alias(owner: str, qualifier: str, session_id: str) -> SessionAlias:
    return SessionAlias(owner, qualifier, session_id, generation=1, created_at=1.0)


async def test_fork_copies_state_and_leaves_the_source_alone(store: Store) -> None:
    source = await store.create_session(alias("ik", "r:key:resp_1", "s1"), now=1.0)
    saved = SessionRecord("s1", "ik", "r:key:resp_1", 1, 1.0, 2.0, {"history": ["a"]}, turns=1)
    granted = await store.apply_lease_event("s1", _arrive("run1"))
    assert granted.session is not None
    assert await store.finish_run("s1", "run1", saved, now=2.0)

    forked = await store.fork_session(source.session_id, alias("ik", "r:key:resp_2", "s2"), 3.0)
    assert forked.session_id == "s2"
    copy = await store.load_session("s2")
    assert copy is not None
    assert copy.state == {"history": ["a"]}
    assert copy.turns == 1
    assert copy.qualifier == "r:key:resp_2"
    assert copy.created_at == 3.0

    # The source is unchanged, and a second fork into the same alias answers the first.
    original = await store.load_session("s1")
    assert original is not None and original.state == {"history": ["a"]}
    again = await store.fork_session("s1", alias("ik", "r:key:resp_2", "s3"), 4.0)
    assert again.session_id == "s2"
    assert await store.load_session("s3") is None


async def test_fork_of_a_missing_source_starts_empty(store: Store) -> None:
    forked = await store.fork_session("nope", alias("ik", "r:key:resp_9", "s9"), 1.0)
    record = await store.load_session(forked.session_id)
    assert record is not None and record.state is None and record.turns == 0


def record(key: str, *, kind: str = "response", expires_at: float | None = None) -> ChannelRecord:
    return ChannelRecord(
        channel="responses",
        kind=kind,
        key=key,
        value={"key": key, "nested": {"n": [1, 2]}},
        owner="ik",
        created_at=5.0,
        expires_at=expires_at,
    )


async def test_channel_records_round_trip_and_replace(store: Store) -> None:
    await store.put_channel_records([record("a"), record("b")])
    got = await store.get_channel_record("responses", "response", "a")
    assert got == record("a")
    await store.put_channel_records([ChannelRecord("responses", "response", "a", {"v": 2})])
    replaced = await store.get_channel_record("responses", "response", "a")
    assert replaced is not None and replaced.value == {"v": 2} and replaced.owner is None
    assert await store.get_channel_record("responses", "other-kind", "a") is None
    assert await store.get_channel_record("telegram", "response", "a") is None


async def test_channel_records_list_by_prefix_in_order_with_paging(store: Store) -> None:
    keys = [f"resp_1:{i:04d}" for i in range(5)] + ["resp_10:0000", "resp_2:0000"]
    await store.put_channel_records([record(k, kind="item") for k in reversed(keys)])

    first = await store.list_channel_records("responses", "item", prefix="resp_1:", limit=2)
    assert [r.key for r in first] == ["resp_1:0000", "resp_1:0001"]
    rest = await store.list_channel_records(
        "responses", "item", prefix="resp_1:", after=first[-1].key, limit=10
    )
    assert [r.key for r in rest] == ["resp_1:0002", "resp_1:0003", "resp_1:0004"]
    newest = await store.list_channel_records(
        "responses", "item", prefix="resp_1:", descending=True, limit=2
    )
    assert [r.key for r in newest] == ["resp_1:0004", "resp_1:0003"]
    older = await store.list_channel_records(
        "responses", "item", prefix="resp_1:", descending=True, after="resp_1:0003"
    )
    assert [r.key for r in older] == ["resp_1:0002", "resp_1:0001", "resp_1:0000"]
    everything = await store.list_channel_records("responses", "item")
    assert [r.key for r in everything] == sorted(keys)


async def test_channel_records_delete_by_prefix_and_expiry(store: Store) -> None:
    await store.put_channel_records(
        [
            record("resp_1:0", kind="item"),
            record("resp_1:1", kind="item"),
            record("resp_2:0", kind="item"),
            record("old", expires_at=10.0),
            record("fresh", expires_at=100.0),
            record("forever"),
        ]
    )
    assert await store.delete_channel_records("responses", "item", prefix="resp_1:") == 2
    left = await store.list_channel_records("responses", "item")
    assert [r.key for r in left] == ["resp_2:0"]
    assert await store.delete_expired_channel_records(now=50.0) == 1
    assert await store.get_channel_record("responses", "response", "old") is None
    assert await store.get_channel_record("responses", "response", "fresh") is not None
    assert await store.get_channel_record("responses", "response", "forever") is not None


async def test_insert_channel_records_inserts_only_absent_keys(store: Store) -> None:
    await store.put_channel_records([record("a", kind="seen")])
    inserted = await store.insert_channel_records(
        [
            ChannelRecord("responses", "seen", "a", {"v": "new"}),
            record("b", kind="seen"),
            ChannelRecord("responses", "seen", "b", {"v": "twice"}),
            record("a", kind="other"),
        ]
    )
    assert inserted == {"a", "b"}  # "a" of kind "other" and "b" of kind "seen"
    kept = await store.get_channel_record("responses", "seen", "a")
    assert kept == record("a", kind="seen")  # present: left alone
    first = await store.get_channel_record("responses", "seen", "b")
    assert first == record("b", kind="seen")  # given twice: the first one wins
    assert await store.get_channel_record("responses", "other", "a") == record("a", kind="other")
    assert await store.insert_channel_records([record("a", kind="seen")]) == set()
    assert await store.insert_channel_records([]) == set()
    # An expired record still present counts as present until it is deleted.
    await store.put_channel_records([record("x", kind="seen", expires_at=1.0)])
    assert await store.insert_channel_records([record("x", kind="seen")]) == set()
    assert await store.delete_expired_channel_records(now=2.0) == 1
    assert await store.insert_channel_records([record("x", kind="seen")]) == {"x"}


async def test_insert_channel_records_writes_companions_of_inserted_keys_only(
    store: Store,
) -> None:
    await store.put_channel_records([record("old", kind="seen")])
    inserted = await store.insert_channel_records(
        [record("old", kind="seen"), record("new", kind="seen")],
        companions={
            "old": [record("old", kind="inbox")],
            "new": [record("new", kind="inbox")],
        },
        put=[ChannelRecord("responses", "cursor", "offset", {"offset": 7})],
    )
    assert inserted == {"new"}
    inbox = await store.list_channel_records("responses", "inbox")
    assert [r.key for r in inbox] == ["new"]
    cursor = await store.get_channel_record("responses", "cursor", "offset")
    assert cursor is not None and cursor.value == {"offset": 7}
    # ``put`` replaces; with no records at all it still writes.
    assert (
        await store.insert_channel_records(
            [], put=[ChannelRecord("responses", "cursor", "offset", {"offset": 9})]
        )
        == set()
    )
    cursor = await store.get_channel_record("responses", "cursor", "offset")
    assert cursor is not None and cursor.value == {"offset": 9}


async def test_concurrent_inserts_of_one_key_report_it_once(store: Store) -> None:
    answers: list[set[str]] = []

    async def insert(n: int) -> None:
        answers.append(
            await store.insert_channel_records(
                [record(f"k{i}", kind="seen") for i in range(n % 3, 20)]
            )
        )

    async with anyio.create_task_group() as tasks:
        for n in range(6):
            tasks.start_soon(insert, n)
    reported = [key for answer in answers for key in answer]
    assert sorted(reported) == sorted(f"k{i}" for i in range(20))
    listed = await store.list_channel_records("responses", "seen", limit=100)
    assert len(listed) == 20


async def test_concurrent_inserts_across_sqlite_replicas_report_a_key_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "shared.db"
    replicas = [SQLiteStore(path) for _ in range(3)]
    for replica in replicas:
        await replica.open()
    answers: list[set[str]] = []

    async def insert(replica: Store) -> None:
        for round_ in range(10):
            answers.append(
                await replica.insert_channel_records(
                    [record(f"r{round_}", kind="seen"), record(f"r{round_}:x", kind="seen")]
                )
            )

    try:
        async with anyio.create_task_group() as tasks:
            for replica in replicas:
                tasks.start_soon(insert, replica)
    finally:
        for replica in replicas:
            await replica.close()
    reported = sorted(key for answer in answers for key in answer)
    assert reported == sorted([f"r{i}" for i in range(10)] + [f"r{i}:x" for i in range(10)])


async def test_channel_record_ranges_after_mixed_writes(store: Store) -> None:
    # Puts, inserts and deletes interleaved keep listing, paging and expiry consistent.
    await store.put_channel_records([record(f"{i:03d}", kind="q") for i in range(0, 50, 2)])
    assert (
        len(
            await store.insert_channel_records(
                [record(f"{i:03d}", kind="q", expires_at=float(i)) for i in range(50)]
            )
        )
        == 25
    )
    assert await store.delete_channel_records("responses", "q", prefix="01") == 10
    assert await store.delete_expired_channel_records(now=30.0) == 10  # odd 1..29 but 11..19
    keys = [r.key for r in await store.list_channel_records("responses", "q", limit=1000)]
    expected = [f"{i:03d}" for i in range(50) if not 10 <= i <= 19 and (i % 2 == 0 or i > 30)]
    assert keys == expected
    page = await store.list_channel_records("responses", "q", after="030", descending=True, limit=3)
    assert [r.key for r in page] == ["028", "026", "024"]
    assert await store.list_channel_records("responses", "q", prefix="zz") == []


async def test_channel_record_owners_list_keys_and_owners_in_key_order_with_paging(
    store: Store,
) -> None:
    def owned(key: str, owner: str | None, *, kind: str = "inbox") -> ChannelRecord:
        return ChannelRecord("telegram", kind, key, {"big": "x" * 100}, owner=owner)

    owners = {"": "a", "001": "a", "002": None, "003": "b", "010": "a", "011": None}
    await store.put_channel_records([owned(k, o) for k, o in reversed(owners.items())])
    # Other kinds and channels are not listed.
    await store.put_channel_records(
        [owned("005", "c", kind="seen"), ChannelRecord("discord", "inbox", "006", {}, owner="c")]
    )

    everything = sorted(owners.items())
    assert await store.list_channel_record_owners("telegram", "inbox") == everything
    listed = await store.list_channel_records("telegram", "inbox")
    assert [(r.key, r.owner) for r in listed] == everything

    first = await store.list_channel_record_owners("telegram", "inbox", limit=4)
    assert first == everything[:4]
    rest = await store.list_channel_record_owners("telegram", "inbox", after=first[-1][0], limit=4)
    assert rest == everything[4:]
    past = await store.list_channel_record_owners("telegram", "inbox", after="0035")
    assert past == [("010", "a"), ("011", None)]
    assert await store.list_channel_record_owners("telegram", "inbox", after="011") == []
    assert await store.list_channel_record_owners("telegram", "nothing") == []


def _arrive(run_id: str) -> leases.Arrive:
    return leases.Arrive(run_id, MultitaskStrategy.ENQUEUE, 1.0, 30.0)
