"""Contract: session states that expire when idle (``Store.expire_idle_states``), on every
store (fixture in conftest.py): what is dropped, what is kept, and that a turn in progress is
never touched."""

from __future__ import annotations

import anyio
import pytest

from agenthost.sansio_core import leases, sessions
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import MultitaskStrategy
from agenthost.stores.base import Store

pytestmark = pytest.mark.anyio

ENQUEUE = MultitaskStrategy.ENQUEUE
IDLE_TTL = 100.0
LEASE_TTL = 30.0
CHECKPOINT = {"workflow": {"checkpoint_id": "c1", "checkpoint": {"blob": "x" * 100}}}


async def save(
    store: Store,
    session_id: str,
    *,
    at: float,
    state: dict[str, object] | None = None,
    expires_when_idle: bool = True,
) -> SessionRecord:
    """Create the session (if new) and save one successful turn in it at ``at``."""
    await store.create_session(SessionAlias("ik", session_id, session_id, 1, 1.0), now=1.0)
    run_id = f"run-{session_id}-{at}"
    granted = await store.apply_lease_event(
        session_id, leases.Arrive(run_id, ENQUEUE, at, LEASE_TTL)
    )
    assert isinstance(granted.decision, leases.Granted) and granted.session is not None
    saved = sessions.after_successful_run(
        granted.session,
        CHECKPOINT if state is None else state,
        at,
        expires_when_idle=expires_when_idle,
    )
    assert await store.finish_run(session_id, run_id, saved, now=at)
    return saved


async def state_of(store: Store, session_id: str) -> object:
    record = await store.load_session(session_id)
    assert record is not None
    return record.state


async def test_a_marked_state_idle_for_the_ttl_is_dropped_and_the_session_stays(
    store: Store,
) -> None:
    saved = await save(store, "s1", at=10.0)
    loaded = await store.load_session("s1")
    assert loaded == saved and loaded.state_expires_when_idle  # the mark is stored

    assert await store.expire_idle_states(10.0 + IDLE_TTL - 1, IDLE_TTL, 10) == 0
    assert await state_of(store, "s1") == CHECKPOINT

    assert await store.expire_idle_states(10.0 + IDLE_TTL, IDLE_TTL, 10) == 1
    after = await store.load_session("s1")
    assert after is not None
    assert after.state is None
    assert not after.state_expires_when_idle
    # Only the state went: the session is still the user's, with its times and turns.
    assert (after.owner, after.qualifier, after.generation) == (saved.owner, "s1", 1)
    assert (after.created_at, after.updated_at, after.turns) == (1.0, 10.0, 1)
    assert [s.session_id for s in await store.list_sessions("ik")] == ["s1"]
    # Dropped once: the next pass has nothing to do.
    assert await store.expire_idle_states(10.0 + 2 * IDLE_TTL, IDLE_TTL, 10) == 0


async def test_an_unmarked_state_never_expires(store: Store) -> None:
    history = {"messages": ["hello", "hi"]}
    await save(store, "agent", at=10.0, state=history, expires_when_idle=False)
    await save(store, "asking", at=10.0, expires_when_idle=False)  # a workflow waiting
    assert await store.expire_idle_states(10.0 + 1000 * IDLE_TTL, IDLE_TTL, 10) == 0
    assert await state_of(store, "agent") == history
    assert await state_of(store, "asking") == CHECKPOINT


async def test_a_later_save_restarts_the_idle_time_and_an_unmarked_one_ends_it(
    store: Store,
) -> None:
    await save(store, "s1", at=10.0)
    await save(store, "s1", at=80.0)  # used again
    assert await store.expire_idle_states(10.0 + IDLE_TTL, IDLE_TTL, 10) == 0
    await save(store, "s1", at=90.0, expires_when_idle=False)  # now it waits for an answer
    assert await store.expire_idle_states(90.0 + 1000 * IDLE_TTL, IDLE_TTL, 10) == 0
    assert await state_of(store, "s1") == CHECKPOINT


async def test_a_session_in_a_turn_is_left_alone_until_its_lease_is_free(store: Store) -> None:
    await save(store, "s1", at=10.0)
    now = 10.0 + IDLE_TTL + 5
    held = await store.apply_lease_event("s1", leases.Arrive("turn", ENQUEUE, now, LEASE_TTL))
    assert isinstance(held.decision, leases.Granted)
    assert held.session is not None and held.session.state == CHECKPOINT  # the turn read it

    assert await store.expire_idle_states(now + 1, IDLE_TTL, 10) == 0
    assert await state_of(store, "s1") == CHECKPOINT

    # A run waiting behind the holder keeps the session in use as well.
    waiting = await store.apply_lease_event("s1", leases.Arrive("next", ENQUEUE, now, LEASE_TTL))
    assert isinstance(waiting.decision, leases.Waiting)
    assert await store.finish_run("s1", "turn", None, now=now + 2) is False  # failed: no save
    assert await store.expire_idle_states(now + 3, IDLE_TTL, 10) == 0
    await store.apply_lease_event("s1", leases.Withdraw("next", now + 4))

    # Free again (the turn failed and saved nothing): the state was idle long enough.
    assert await store.expire_idle_states(now + 5, IDLE_TTL, 10) == 1
    assert await state_of(store, "s1") is None


async def test_a_holder_whose_lease_lapsed_no_longer_keeps_the_state(store: Store) -> None:
    await save(store, "s1", at=10.0)
    now = 10.0 + IDLE_TTL
    await store.apply_lease_event("s1", leases.Arrive("dead", ENQUEUE, now, LEASE_TTL))
    assert await store.expire_idle_states(now + LEASE_TTL - 1, IDLE_TTL, 10) == 0
    assert await store.expire_idle_states(now + LEASE_TTL, IDLE_TTL, 10) == 1


async def test_a_pass_takes_at_most_limit_sessions_least_recently_saved_first(
    store: Store,
) -> None:
    for n, at in enumerate([50.0, 10.0, 40.0, 20.0, 30.0]):
        await save(store, f"s{n}", at=at)
    now = 50.0 + IDLE_TTL
    assert await store.expire_idle_states(now, IDLE_TTL, 2) == 2
    kept = {f"s{n}": await state_of(store, f"s{n}") is not None for n in range(5)}
    assert kept == {"s0": True, "s1": False, "s2": True, "s3": False, "s4": True}
    assert await store.expire_idle_states(now, IDLE_TTL, 2) == 2
    assert await store.expire_idle_states(now, IDLE_TTL, 2) == 1
    assert await store.expire_idle_states(now, IDLE_TTL, 2) == 0


async def test_a_fork_of_a_marked_session_expires_on_its_own(store: Store) -> None:
    await save(store, "s1", at=10.0)
    await store.fork_session("s1", SessionAlias("ik", "fork", "s2", 1, 60.0), now=60.0)
    fork = await store.load_session("s2")
    assert fork is not None and fork.state == CHECKPOINT and fork.state_expires_when_idle
    assert await store.expire_idle_states(10.0 + IDLE_TTL, IDLE_TTL, 10) == 1
    assert await state_of(store, "s1") is None
    assert await state_of(store, "s2") == CHECKPOINT
    assert await store.expire_idle_states(60.0 + IDLE_TTL, IDLE_TTL, 10) == 1
    assert await state_of(store, "s2") is None


async def test_concurrent_passes_drop_each_state_once(store: Store) -> None:
    count = 12
    for n in range(count):
        await save(store, f"s{n}", at=10.0 + n)
    dropped: list[int] = []

    async def sweep() -> None:
        for _ in range(count):  # bounded: more passes than there are states
            dropped.append(await store.expire_idle_states(1000.0, IDLE_TTL, 3))

    async with anyio.create_task_group() as passes:
        for _ in range(3):
            passes.start_soon(sweep)
    assert sum(dropped) == count
    assert all([await state_of(store, f"s{n}") is None for n in range(count)])
