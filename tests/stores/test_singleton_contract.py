"""``acquire_singleton`` / ``release_singleton`` on every store: one holder per name until
its lease expires (memory and SQLite within their one process, PostgreSQL across replicas:
see ``test_postgres_replicas.py``)."""

from __future__ import annotations

import pytest

from agenthost.stores.base import Store

pytestmark = pytest.mark.anyio


async def test_a_singleton_has_one_holder_until_it_expires_or_is_released(store: Store) -> None:
    assert await store.acquire_singleton("poller", "a", now=10.0, ttl=5.0)
    assert not await store.acquire_singleton("poller", "b", now=14.0, ttl=5.0)
    assert await store.acquire_singleton("other", "b", now=14.0, ttl=5.0)  # names are apart
    assert await store.acquire_singleton("poller", "a", now=14.0, ttl=5.0)  # renewed to 19
    assert not await store.acquire_singleton("poller", "b", now=18.0, ttl=5.0)
    assert await store.acquire_singleton("poller", "b", now=19.0, ttl=5.0)  # a's lapsed
    await store.release_singleton("poller", "a")  # a holds nothing: no effect
    assert not await store.acquire_singleton("poller", "a", now=20.0, ttl=5.0)
    await store.release_singleton("poller", "b")
    assert await store.acquire_singleton("poller", "a", now=20.0, ttl=5.0)


async def test_lapsed_leases_are_swept_and_held_ones_kept(store: Store) -> None:
    assert await store.acquire_singleton("inbox:a", "a", now=10.0, ttl=5.0)  # a died
    assert await store.acquire_singleton("inbox:b", "b", now=10.0, ttl=20.0)
    assert await store.delete_expired_singletons(now=15.0) == 1
    assert await store.delete_expired_singletons(now=15.0) == 0
    assert not await store.acquire_singleton("inbox:b", "c", now=16.0, ttl=5.0)  # still b's
    assert await store.acquire_singleton("inbox:a", "c", now=16.0, ttl=5.0)
