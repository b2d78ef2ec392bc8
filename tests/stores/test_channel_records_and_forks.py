"""Contract: session forks and channel records, on every store (fixture in conftest.py)."""

from __future__ import annotations

import pytest

from agenthost.sansio_core import leases
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import MultitaskStrategy
from agenthost.stores.base import ChannelRecord, Store

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


def _arrive(run_id: str) -> leases.Arrive:
    return leases.Arrive(run_id, MultitaskStrategy.ENQUEUE, 1.0, 30.0)
