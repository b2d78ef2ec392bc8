"""The store contract, run against every store (see ``conftest.py``).

Each test states one promise of ``agenthost.stores.base.Store``; a new store is correct when
this module passes for it unchanged.
"""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest

from agenthost.sansio_core import background, leases, opening
from agenthost.sansio_core.authorization import ChannelAccess, NativeIdAllowlist
from agenthost.sansio_core.background import RunRecord, RunTransitionRefused
from agenthost.sansio_core.effects import LeaseAnswer, RequestContext
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    HostMessage,
    MultitaskStrategy,
    ResponseTarget,
    RunStatus,
    SessionMode,
    SessionRef,
    UriPart,
)
from agenthost.stores.base import FinishedTurn, RunNotFound, Store, TurnWrites

pytestmark = pytest.mark.anyio

ALICE = ChannelIdentity("telegram", "111")
ALICE_ON_SLACK = ChannelIdentity("slack", "111")  # same native id, another channel
BOB = ChannelIdentity("telegram", "222")

ENQUEUE = MultitaskStrategy.ENQUEUE
REJECT = MultitaskStrategy.REJECT
INTERRUPT = MultitaskStrategy.INTERRUPT
TTL = 30.0


def alias(
    owner: str, qualifier: str = "direct", session_id: str = "s1", now: float = 1.0
) -> SessionAlias:
    return SessionAlias(owner, qualifier, session_id, generation=1, created_at=now)


def make_run(token: str, *, created_at: float = 100.0, max_attempts: int = 3) -> RunRecord:
    request = ChannelRequest(
        channel="invocations",
        identity=ALICE,
        input=(
            HostMessage.user("hello"),
            HostMessage("user", (UriPart("https://x/y.png", "image/png"),)),
        ),
        session=ChannelSession(key="caller-key", caller_keyed=True),
        options={"temperature": 0.5},
        response_target=ResponseTarget.channel("telegram", echo_input=True),
        background=True,
        metadata={"trace": "abc"},
    )
    return background.new_run(
        token=token,
        request=request,
        isolation_key="key-alice",
        session_id="s1",
        session_key="caller-key",
        now=created_at,
        max_attempts=max_attempts,
    )


async def arrive(
    store: Store, run_id: str, *, now: float = 0.0, strategy: MultitaskStrategy = ENQUEUE
) -> LeaseAnswer:
    return await store.apply_lease_event("s1", leases.Arrive(run_id, strategy, now, TTL))


async def poll(store: Store, run_id: str, *, now: float = 0.0) -> LeaseAnswer:
    return await store.apply_lease_event("s1", leases.Poll(run_id, now, TTL))


# --- identities -----------------------------------------------------------------------


async def test_issue_isolation_key_keeps_the_first_key(store: Store) -> None:
    assert await store.issue_isolation_key(ALICE, "key-1", now=1.0) == "key-1"
    assert await store.issue_isolation_key(ALICE, "key-2", now=2.0) == "key-1"
    assert await store.issue_isolation_key(ALICE_ON_SLACK, "key-3", now=3.0) == "key-3"
    assert (await store.load_context(ALICE, None)).isolation_key == "key-1"


async def test_load_context_of_an_unknown_identity_is_empty(store: Store) -> None:
    assert await store.load_context(ALICE, None) == RequestContext(None, None)
    assert await store.load_context(ALICE, ScopeKey(None, "direct")) == RequestContext(None, None)


async def test_load_context_without_an_alias(store: Store) -> None:
    await store.issue_isolation_key(ALICE, "key-alice", now=1.0)
    assert await store.load_context(ALICE, None) == RequestContext("key-alice", None)
    context = await store.load_context(ALICE, ScopeKey(None, "direct"))
    assert context == RequestContext("key-alice", None)


async def test_load_context_finds_the_alias_owned_by_the_identity_key(store: Store) -> None:
    await store.issue_isolation_key(ALICE, "key-alice", now=1.0)
    await store.issue_isolation_key(BOB, "key-bob", now=1.0)
    mine = await store.create_session(alias("key-alice", session_id="s-alice"), now=2.0)

    assert await store.load_context(ALICE, ScopeKey(None, "direct")) == RequestContext(
        "key-alice", mine
    )
    # Bob asks for the same qualifier and finds nothing: the alias is Alice's.
    assert await store.load_context(BOB, ScopeKey(None, "direct")) == RequestContext(
        "key-bob", None
    )
    # Another qualifier of Alice's is another alias.
    other = await store.load_context(ALICE, ScopeKey(None, "telegram:conversation:9"))
    assert other == RequestContext("key-alice", None)
    # No scope: only the key.
    assert await store.load_context(ALICE, None) == RequestContext("key-alice", None)


async def test_load_context_with_a_conversation_owned_scope(store: Store) -> None:
    await store.issue_isolation_key(ALICE, "key-alice", now=1.0)
    await store.issue_isolation_key(BOB, "key-bob", now=1.0)
    shared_scope = ScopeKey("conversation:telegram:42", "shared")
    shared = await store.create_session(
        alias("conversation:telegram:42", "shared", session_id="s-group"), now=2.0
    )
    # An alias with the same qualifier owned by Alice must not be the one found.
    await store.create_session(alias("key-alice", "shared", session_id="s-alice"), now=2.0)

    assert await store.load_context(ALICE, shared_scope) == RequestContext("key-alice", shared)
    assert await store.load_context(BOB, shared_scope) == RequestContext("key-bob", shared)
    assert await store.load_alias(shared_scope) == shared


# --- sessions -------------------------------------------------------------------------


async def test_load_alias_needs_an_owner(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.load_alias(ScopeKey(None, "direct"))
    assert await store.load_alias(ScopeKey("key-alice", "direct")) is None


async def test_create_session_stores_alias_and_empty_session(store: Store) -> None:
    created = await store.create_session(alias("key-alice", session_id="s1", now=5.0), now=5.0)
    assert created == alias("key-alice", session_id="s1", now=5.0)
    assert await store.load_alias(ScopeKey("key-alice", "direct")) == created
    assert await store.load_session("s1") == SessionRecord(
        session_id="s1",
        owner="key-alice",
        qualifier="direct",
        generation=1,
        created_at=5.0,
        updated_at=5.0,
        state=None,
        turns=0,
    )
    assert await store.load_session("nope") is None


async def test_create_session_returns_the_existing_alias(store: Store) -> None:
    first = await store.create_session(alias("key-alice", session_id="s1"), now=1.0)
    second = await store.create_session(alias("key-alice", session_id="s2", now=2.0), now=2.0)
    assert second == first
    assert second.session_id == "s1"
    assert await store.load_session("s2") is None  # the loser's session was not stored
    assert [s.session_id for s in await store.list_sessions("key-alice")] == ["s1"]


async def test_rotate_session_starts_a_new_generation_and_keeps_history(store: Store) -> None:
    scope = ScopeKey("key-alice", "direct")
    await store.create_session(alias("key-alice", session_id="s1"), now=1.0)
    saved = SessionRecord("s1", "key-alice", "direct", 1, 1.0, 2.0, {"messages": ["hi"]}, 1)
    await store.apply_lease_event("s1", leases.Arrive("run-1", ENQUEUE, 2.0, TTL))
    assert await store.finish_run("s1", "run-1", saved, now=2.0)

    rotated = await store.rotate_session(scope, "s2", now=10.0)
    assert rotated == SessionAlias("key-alice", "direct", "s2", generation=2, created_at=10.0)
    assert await store.load_alias(scope) == rotated
    fresh = await store.load_session("s2")
    assert fresh is not None
    assert (fresh.generation, fresh.state, fresh.turns, fresh.created_at) == (2, None, 0, 10.0)
    assert await store.load_session("s1") == saved  # the old session is still readable

    again = await store.rotate_session(scope, "s3", now=20.0)
    assert again.generation == 3
    history = await store.list_sessions("key-alice")
    assert [(s.session_id, s.generation) for s in history] == [("s1", 1), ("s2", 2), ("s3", 3)]
    assert history[0] == saved


async def test_rotate_session_without_an_alias_starts_at_generation_one(store: Store) -> None:
    rotated = await store.rotate_session(ScopeKey("key-alice", "direct"), "s1", now=3.0)
    assert rotated == SessionAlias("key-alice", "direct", "s1", generation=1, created_at=3.0)
    assert (await store.load_session("s1")) is not None
    with pytest.raises(ValueError):
        await store.rotate_session(ScopeKey(None, "direct"), "s9", now=4.0)


async def test_list_sessions_is_per_owner_oldest_first(store: Store) -> None:
    await store.create_session(alias("key-alice", "b", session_id="s-late", now=3.0), now=3.0)
    await store.create_session(alias("key-alice", "a", session_id="s-early", now=1.0), now=1.0)
    await store.create_session(alias("key-bob", "a", session_id="s-bob", now=2.0), now=2.0)
    assert [s.session_id for s in await store.list_sessions("key-alice")] == ["s-early", "s-late"]
    assert [s.session_id for s in await store.list_sessions("key-bob")] == ["s-bob"]
    assert await store.list_sessions("key-nobody") == []


# --- session leases -------------------------------------------------------------------


async def test_lease_grant_loads_the_session(store: Store) -> None:
    await store.create_session(alias("key-alice", session_id="s1"), now=1.0)
    answer = await arrive(store, "run-1")
    assert answer.decision == leases.Granted(fence=1)
    assert answer.session is not None
    assert answer.session.session_id == "s1"
    assert answer.session == await store.load_session("s1")

    waiting = await arrive(store, "run-2")
    assert waiting == LeaseAnswer(leases.Waiting(position=0), None)


async def test_lease_grant_without_a_stored_session(store: Store) -> None:
    assert await arrive(store, "run-1") == LeaseAnswer(leases.Granted(fence=1), None)


async def test_lease_repeated_arrival_is_idempotent(store: Store) -> None:
    assert (await arrive(store, "run-1")).decision == leases.Granted(fence=1)
    assert (await arrive(store, "run-1", now=1.0)).decision == leases.Granted(fence=1)
    assert (await arrive(store, "run-2")).decision == leases.Waiting(position=0)
    assert (await arrive(store, "run-2", now=1.0)).decision == leases.Waiting(position=0)
    assert (await arrive(store, "run-3")).decision == leases.Waiting(position=1)


async def test_lease_waiters_are_served_in_arrival_order(store: Store) -> None:
    await store.create_session(alias("key-alice", session_id="s1"), now=0.0)
    assert (await arrive(store, "run-1")).decision == leases.Granted(fence=1)
    assert (await arrive(store, "run-2", now=1.0)).decision == leases.Waiting(position=0)
    assert (await arrive(store, "run-3", now=2.0)).decision == leases.Waiting(position=1)

    assert await store.finish_run("s1", "run-1", None, now=3.0) is False  # released, no save
    # run-3 polls first but run-2 arrived first: run-3 keeps waiting.
    assert (await poll(store, "run-3", now=4.0)).decision == leases.Waiting(position=1)
    granted = await poll(store, "run-2", now=4.0)
    assert granted.decision == leases.Granted(fence=2)
    assert granted.session is not None and granted.session.session_id == "s1"
    assert (await poll(store, "run-3", now=5.0)).decision == leases.Waiting(position=0)

    await store.finish_run("s1", "run-2", None, now=6.0)
    assert (await poll(store, "run-3", now=7.0)).decision == leases.Granted(fence=3)


async def test_lease_withdrawn_waiter_leaves_the_queue(store: Store) -> None:
    await arrive(store, "run-1")
    await arrive(store, "run-2")
    await arrive(store, "run-3")
    withdrawn = await store.apply_lease_event("s1", leases.Withdraw("run-2", 1.0))
    assert withdrawn.decision == leases.Withdrawn()
    assert (await poll(store, "run-3", now=1.0)).decision == leases.Waiting(position=0)


async def test_lease_reject_strategy(store: Store) -> None:
    assert (await arrive(store, "run-1", strategy=REJECT)).decision == leases.Granted(fence=1)
    assert await arrive(store, "run-2", strategy=REJECT) == LeaseAnswer(leases.Rejected(), None)
    # A rejected run was never queued.
    await store.finish_run("s1", "run-1", None, now=1.0)
    assert (await arrive(store, "run-3", now=2.0)).decision == leases.Granted(fence=2)


async def test_lease_interrupt_is_seen_by_the_holders_renew(store: Store) -> None:
    assert (await arrive(store, "run-1")).decision == leases.Granted(fence=1)
    renewed = await store.apply_lease_event("s1", leases.Renew("run-1", 1.0, TTL))
    assert renewed.decision == leases.Renewed(interrupt_requested=False)

    assert (await arrive(store, "run-2", now=2.0)).decision == leases.Waiting(position=0)
    interrupting = await arrive(store, "run-3", now=3.0, strategy=INTERRUPT)
    assert interrupting.decision == leases.Waiting(position=0, interrupting="run-1")

    renewed = await store.apply_lease_event("s1", leases.Renew("run-1", 4.0, TTL))
    assert renewed.decision == leases.Renewed(interrupt_requested=True)
    # The interrupter jumped the queue.
    assert (await poll(store, "run-2", now=4.0)).decision == leases.Waiting(position=1)
    await store.finish_run("s1", "run-1", None, now=5.0)
    assert (await poll(store, "run-3", now=6.0)).decision == leases.Granted(fence=2)
    renewed = await store.apply_lease_event("s1", leases.Renew("run-3", 7.0, TTL))
    assert renewed.decision == leases.Renewed(interrupt_requested=False)


async def test_lease_of_an_expired_holder_is_taken_over(store: Store) -> None:
    await store.create_session(alias("key-alice", session_id="s1"), now=0.0)
    assert (await arrive(store, "run-1", now=0.0)).decision == leases.Granted(fence=1)
    assert (await arrive(store, "run-2", now=TTL - 1)).decision == leases.Waiting(position=0)
    taken = await poll(store, "run-2", now=TTL + 1)
    assert taken.decision == leases.Granted(fence=2)
    assert taken.session is not None

    lost = await store.apply_lease_event("s1", leases.Renew("run-1", TTL + 2, TTL))
    assert lost == LeaseAnswer(leases.LeaseLost(), None)
    stale = SessionRecord("s1", "key-alice", "direct", 1, 0.0, TTL + 3, {"poison": True}, 1)
    assert await store.finish_run("s1", "run-1", stale, now=TTL + 3) is False
    stored = await store.load_session("s1")
    assert stored is not None and stored.state is None and stored.turns == 0
    # run-2 still holds the lease.
    renewed = await store.apply_lease_event("s1", leases.Renew("run-2", TTL + 4, TTL))
    assert renewed.decision == leases.Renewed(interrupt_requested=False)


async def test_finish_run_saves_for_the_holder_and_releases(store: Store) -> None:
    await store.create_session(alias("key-alice", session_id="s1"), now=0.0)
    await arrive(store, "run-1")
    await arrive(store, "run-2")
    saved = SessionRecord("s1", "key-alice", "direct", 1, 0.0, 5.0, {"history": [1, "two"]}, 1)

    # A waiter may not save.
    assert await store.finish_run("s1", "run-2", saved, now=4.0) is False
    stored = await store.load_session("s1")
    assert stored is not None and stored.turns == 0

    assert await store.finish_run("s1", "run-1", saved, now=5.0) is True
    assert await store.load_session("s1") == saved
    # Released: the holder cannot renew, and cannot release twice.
    lost = await store.apply_lease_event("s1", leases.Renew("run-1", 6.0, TTL))
    assert lost.decision == leases.LeaseLost()
    assert await store.finish_run("s1", "run-1", saved, now=6.0) is False
    granted = await poll(store, "run-2", now=7.0)
    assert granted.decision == leases.Granted(fence=2)
    assert granted.session == saved


async def test_finish_run_releases_without_saving_a_failed_run(store: Store) -> None:
    await store.create_session(alias("key-alice", session_id="s1"), now=0.0)
    await arrive(store, "run-1")
    assert await store.finish_run("s1", "run-1", None, now=1.0) is False
    stored = await store.load_session("s1")
    assert stored is not None and stored.turns == 0
    assert (await arrive(store, "run-2", now=2.0)).decision == leases.Granted(fence=2)


async def test_leases_are_per_session(store: Store) -> None:
    one = await store.apply_lease_event("s1", leases.Arrive("run-1", ENQUEUE, 0.0, TTL))
    two = await store.apply_lease_event("s2", leases.Arrive("run-2", ENQUEUE, 0.0, TTL))
    assert one.decision == two.decision == leases.Granted(fence=1)


# --- background runs ------------------------------------------------------------------


async def test_create_and_get_run(store: Store) -> None:
    record = make_run("t1")
    await store.create_run(record)
    loaded = await store.get_run("t1")
    assert loaded == record
    assert loaded is not None
    assert loaded.request.input == record.request.input
    assert dict(loaded.request.options) == {"temperature": 0.5}
    assert dict(loaded.request.metadata) == {"trace": "abc"}
    assert await store.get_run("nope") is None


async def test_create_run_refuses_a_duplicate_token(store: Store) -> None:
    await store.create_run(make_run("t1"))
    with pytest.raises(ValueError, match="t1"):
        await store.create_run(make_run("t1", created_at=200.0))
    loaded = await store.get_run("t1")
    assert loaded is not None and loaded.created_at == 100.0


async def test_run_start_heartbeat_complete(store: Store) -> None:
    await store.create_run(make_run("t1"))
    started = await store.apply_run_event("t1", background.Start("w1", 101.0, 10.0))
    assert started.status is RunStatus.RUNNING
    assert (started.owner, started.attempts, started.lease_expires_at) == ("w1", 1, 111.0)
    assert await store.get_run("t1") == started

    beat = await store.apply_run_event("t1", background.Heartbeat("w1", 105.0, 10.0))
    assert beat.lease_expires_at == 115.0
    assert await store.get_run("t1") == beat

    done = await store.apply_run_event(
        "t1", background.Complete("w1", 106.0, {"text": "hi", "n": [1, 2]}, ttl=60.0)
    )
    assert done.status is RunStatus.COMPLETED
    assert (done.owner, done.completed_at, done.expires_at) == (None, 106.0, 166.0)
    loaded = await store.get_run("t1")
    assert loaded == done
    assert loaded is not None and dict(loaded.result or {}) == {"text": "hi", "n": [1, 2]}


async def test_run_fail(store: Store) -> None:
    await store.create_run(make_run("t1"))
    await store.apply_run_event("t1", background.Start("w1", 101.0, 10.0))
    failed = await store.apply_run_event("t1", background.Fail("w1", 102.0, "boom", ttl=5.0))
    assert (failed.status, failed.error) == (RunStatus.FAILED, "boom")
    assert await store.get_run("t1") == failed


async def test_run_event_from_a_stale_owner_is_refused(store: Store) -> None:
    await store.create_run(make_run("t1"))
    started = await store.apply_run_event("t1", background.Start("w1", 101.0, 10.0))
    with pytest.raises(RunTransitionRefused):
        await store.apply_run_event("t1", background.Heartbeat("w2", 102.0, 10.0))
    with pytest.raises(RunTransitionRefused):
        await store.apply_run_event("t1", background.Complete("w2", 102.0, {}, ttl=1.0))
    with pytest.raises(RunTransitionRefused):  # no such transition: already running
        await store.apply_run_event("t1", background.Start("w2", 102.0, 10.0))
    assert await store.get_run("t1") == started  # nothing was written


async def test_run_event_on_an_unknown_token(store: Store) -> None:
    with pytest.raises(RunNotFound):
        await store.apply_run_event("nope", background.Cancel(1.0, ttl=1.0))


async def test_cancel_is_idempotent(store: Store) -> None:
    await store.create_run(make_run("t1"))
    cancelled = await store.apply_run_event("t1", background.Cancel(101.0, ttl=10.0))
    assert cancelled.status is RunStatus.CANCELLED
    again = await store.apply_run_event("t1", background.Cancel(102.0, ttl=10.0))
    assert again == cancelled
    assert await store.get_run("t1") == cancelled

    await store.create_run(make_run("t2"))
    await store.apply_run_event("t2", background.Start("w1", 101.0, 10.0))
    done = await store.apply_run_event("t2", background.Complete("w1", 102.0, {}, ttl=10.0))
    assert await store.apply_run_event("t2", background.Cancel(103.0, ttl=10.0)) == done


async def test_recover_requeues_an_abandoned_run(store: Store) -> None:
    await store.create_run(make_run("t1"))
    started = await store.apply_run_event("t1", background.Start("w1", 100.0, 10.0))
    # Still within its lease: recovery changes nothing.
    assert await store.apply_run_event("t1", background.Recover(105.0, ttl=10.0)) == started
    recovered = await store.apply_run_event("t1", background.Recover(111.0, ttl=10.0))
    assert recovered.status is RunStatus.QUEUED
    assert (recovered.owner, recovered.lease_expires_at, recovered.attempts) == (None, None, 1)
    assert await store.get_run("t1") == recovered
    # The dead worker's late heartbeat is refused.
    with pytest.raises(RunTransitionRefused):
        await store.apply_run_event("t1", background.Heartbeat("w1", 112.0, 10.0))


async def test_recover_fails_a_run_out_of_attempts(store: Store) -> None:
    await store.create_run(make_run("t1", max_attempts=1))
    await store.apply_run_event("t1", background.Start("w1", 100.0, 10.0))
    recovered = await store.apply_run_event("t1", background.Recover(120.0, ttl=10.0))
    assert recovered.status is RunStatus.FAILED
    assert recovered.error is not None and "not retried" in recovered.error
    assert recovered.expires_at == 130.0


async def test_list_runs_by_status_oldest_first(store: Store) -> None:
    for token, created_at in [("t-c", 3.0), ("t-a", 1.0), ("t-b", 2.0), ("t-a2", 1.0)]:
        await store.create_run(make_run(token, created_at=created_at))
    await store.apply_run_event("t-b", background.Start("w1", 4.0, 10.0))

    queued = await store.list_runs([RunStatus.QUEUED])
    assert [r.token for r in queued] == ["t-a", "t-a2", "t-c"]
    running = await store.list_runs([RunStatus.RUNNING])
    assert [r.token for r in running] == ["t-b"]
    assert running[0] == await store.get_run("t-b")
    both = await store.list_runs(iter([RunStatus.RUNNING, RunStatus.QUEUED]))
    assert [r.token for r in both] == ["t-a", "t-a2", "t-b", "t-c"]
    assert await store.list_runs([RunStatus.COMPLETED]) == []
    assert await store.list_runs([]) == []


async def test_delete_expired_runs(store: Store) -> None:
    for token in ("done", "later", "queued", "running"):
        await store.create_run(make_run(token))
    for token in ("done", "later", "running"):
        await store.apply_run_event(token, background.Start("w1", 100.0, 1000.0))
    await store.apply_run_event("done", background.Complete("w1", 101.0, {}, ttl=10.0))
    await store.apply_run_event("later", background.Fail("w1", 101.0, "x", ttl=100.0))

    assert await store.delete_expired_runs(now=110.0) == 0
    assert await store.delete_expired_runs(now=111.0) == 1
    assert await store.get_run("done") is None
    assert await store.delete_expired_runs(now=111.0) == 0
    assert await store.delete_expired_runs(now=500.0) == 1
    assert await store.get_run("later") is None
    remaining = await store.list_runs(list(RunStatus))
    assert sorted(r.token for r in remaining) == ["queued", "running"]
    with pytest.raises(RunNotFound):
        await store.apply_run_event("done", background.Cancel(600.0, ttl=1.0))


# --- concurrency ----------------------------------------------------------------------


async def test_concurrent_isolation_keys_agree(store: Store) -> None:
    won: list[str] = []

    async def issue(n: int) -> None:
        won.append(await store.issue_isolation_key(ALICE, f"key-{n}", now=float(n)))

    async with anyio.create_task_group() as tg:
        for n in range(25):
            tg.start_soon(issue, n)

    assert len(won) == 25
    assert len(set(won)) == 1
    assert won[0] in {f"key-{n}" for n in range(25)}
    assert (await store.load_context(ALICE, None)).isolation_key == won[0]


async def test_concurrent_create_session_agree(store: Store) -> None:
    won: list[SessionAlias] = []

    async def create(n: int) -> None:
        won.append(await store.create_session(alias("key-alice", session_id=f"s{n}"), now=1.0))

    async with anyio.create_task_group() as tg:
        for n in range(15):
            tg.start_soon(create, n)

    assert len({a.session_id for a in won}) == 1
    assert [s.session_id for s in await store.list_sessions("key-alice")] == [won[0].session_id]


async def test_concurrent_arrivals_grant_exactly_one(store: Store) -> None:
    answers: dict[str, LeaseAnswer] = {}

    async def come(n: int) -> None:
        answers[f"run-{n}"] = await arrive(store, f"run-{n}", now=1.0)

    async with anyio.create_task_group() as tg:
        for n in range(25):
            tg.start_soon(come, n)

    granted = [run for run, a in answers.items() if isinstance(a.decision, leases.Granted)]
    waiting = [a.decision for a in answers.values() if isinstance(a.decision, leases.Waiting)]
    assert len(granted) == 1
    assert sorted(w.position for w in waiting) == list(range(24))
    # The lease state agrees: only the winner may renew.
    for run in answers:
        renew = await store.apply_lease_event("s1", leases.Renew(run, 2.0, TTL))
        expected = leases.Renewed(False) if run == granted[0] else leases.LeaseLost()
        assert renew.decision == expected


# --- opening a turn in one trip -------------------------------------------------------


def opening_for(
    identity: ChannelIdentity,
    run_id: str,
    *,
    scope: ScopeKey | None = ScopeKey(None, "direct"),  # noqa: B008 - a frozen value
    mode: SessionMode = SessionMode.AUTO,
    strategy: MultitaskStrategy = ENQUEUE,
    access: ChannelAccess | None = None,
    now: float = 10.0,
) -> opening.Opening:
    return opening.Opening(
        identity=identity,
        scope=scope,
        session_key=None,
        session_mode=mode,
        access=access or ChannelAccess(),
        is_direct=True,
        run_id=run_id,
        strategy=strategy,
        now=now,
        last_seen=LastSeen(identity.channel, identity, None, now),
        lease_seconds=TTL,
    )


async def test_open_turn_of_a_stranger_issues_a_key_creates_a_session_and_leases_it(
    store: Store,
) -> None:
    opened = await store.open_turn(opening_for(ALICE, "r1"))
    assert isinstance(opened, opening.Opened)
    assert isinstance(opened.lease, leases.Granted)
    assert opened.session_ref == SessionRef("ik_r1", "s_r1", None)
    assert opened.session is not None and opened.session.state is None
    context = await store.load_context(ALICE, ScopeKey(None, "direct"))
    assert context.isolation_key == "ik_r1"
    assert context.alias is not None and context.alias.session_id == "s_r1"
    assert [s.channel for s in await store.list_last_seen("ik_r1")] == ["telegram"]
    # the lease is held: a second arrival waits
    waiting = await store.open_turn(opening_for(ALICE, "r2"))
    assert isinstance(waiting, opening.Opened)
    assert isinstance(waiting.lease, leases.Waiting)
    assert waiting.session is None


async def test_open_turn_of_a_returning_user_loads_the_saved_session(store: Store) -> None:
    first = await store.open_turn(opening_for(ALICE, "r1"))
    assert isinstance(first, opening.Opened) and first.session is not None
    saved = attrs.evolve(first.session, state={"history": ["hi"]}, turns=1)
    assert await store.finish_run("s_r1", "r1", saved, 11.0)
    again = await store.open_turn(opening_for(ALICE, "r2", now=12.0))
    assert isinstance(again, opening.Opened) and isinstance(again.lease, leases.Granted)
    assert again.session_ref.session_id == "s_r1"
    assert again.session is not None and again.session.state == {"history": ["hi"]}


async def test_open_turn_refused_by_the_allowlist_writes_nothing(store: Store) -> None:
    closed = ChannelAccess(allowlist=NativeIdAllowlist({"telegram": ["someone-else"]}))
    refused = await store.open_turn(opening_for(ALICE, "r1", access=closed))
    assert isinstance(refused, opening.Refused) and refused.access is not None
    assert await store.load_context(ALICE, ScopeKey(None, "direct")) == RequestContext(None, None)
    assert await store.list_last_seen("ik_r1") == []


async def test_open_turn_required_without_a_session_creates_none(store: Store) -> None:
    refused = await store.open_turn(opening_for(ALICE, "r1", mode=SessionMode.REQUIRED))
    assert refused == opening.Refused(None)
    assert await store.load_alias(ScopeKey("ik_r1", "direct")) is None
    assert await store.load_session("s_r1") is None


async def test_open_turn_finds_a_shared_scope_for_a_new_member(store: Store) -> None:
    shared = ScopeKey("conversation:telegram:g1", "shared")
    await store.open_turn(opening_for(ALICE, "r1", scope=shared))
    await store.finish_run("s_r1", "r1", None, 11.0)
    bob = await store.open_turn(opening_for(BOB, "r2", scope=shared))
    assert isinstance(bob, opening.Opened)
    assert bob.session_ref.session_id == "s_r1"  # the conversation's, not a new one


async def test_open_turn_with_reject_on_a_busy_session(store: Store) -> None:
    await store.open_turn(opening_for(ALICE, "r1"))
    busy = await store.open_turn(opening_for(ALICE, "r2", strategy=REJECT))
    assert isinstance(busy, opening.Opened) and isinstance(busy.lease, leases.Rejected)


async def test_concurrent_openings_of_one_user_grant_exactly_one(store: Store) -> None:
    await store.open_turn(opening_for(ALICE, "r0"))
    await store.finish_run("s_r0", "r0", None, 11.0)
    answers: list[opening.Outcome] = []

    async def arrive(n: int) -> None:
        answers.append(await store.open_turn(opening_for(ALICE, f"r{n + 1}", now=12.0)))

    async with anyio.create_task_group() as tasks:
        for n in range(8):
            tasks.start_soon(arrive, n)
    decisions = [a.lease for a in answers if isinstance(a, opening.Opened)]
    assert sum(isinstance(d, leases.Granted) for d in decisions) == 1
    assert sum(isinstance(d, leases.Waiting) for d in decisions) == 7


async def test_open_turn_of_a_fork_copies_its_source_into_a_session_of_its_own(
    store: Store,
) -> None:
    source = ScopeKey(None, "responses:key:resp_1")
    first = await store.open_turn(
        attrs.evolve(
            opening_for(ALICE, "r1", scope=None),
            fork_scope=source,
            session_key="resp_1",
        )
    )
    assert isinstance(first, opening.Opened) and first.session is not None
    await store.finish_run(
        "s_r1", "r1", attrs.evolve(first.session, state={"history": ["one"]}, turns=1), 11.0
    )
    fork = attrs.evolve(
        opening_for(ALICE, "r2", scope=source),
        fork_scope=ScopeKey(None, "responses:key:resp_2"),
        has_source_key=True,
        session_key="resp_2",
    )
    forked = await store.open_turn(fork)
    assert isinstance(forked, opening.Opened) and isinstance(forked.lease, leases.Granted)
    assert forked.session_ref.session_id == "s_r2"
    assert forked.session is not None and forked.session.state == {"history": ["one"]}
    # the source is unchanged, and a retried fork finds the session the first try made
    source_session = await store.load_session("s_r1")
    assert source_session is not None and source_session.state == {"history": ["one"]}
    await store.finish_run("s_r2", "r2", None, 12.0)
    retried = await store.open_turn(attrs.evolve(fork, run_id="r3"))
    assert isinstance(retried, opening.Opened) and retried.session_ref.session_id == "s_r2"


async def test_open_turn_of_a_fork_whose_source_is_unknown_is_refused(store: Store) -> None:
    await store.open_turn(opening_for(ALICE, "r0"))  # a known user, without that source
    fork = attrs.evolve(
        opening_for(ALICE, "r1", scope=ScopeKey(None, "responses:key:resp_x")),
        fork_scope=ScopeKey(None, "responses:key:resp_2"),
        has_source_key=True,
    )
    assert await store.open_turn(fork) == opening.Refused(None)


# --- a session only its turn can name (opening rule 5) ---------------------------------


def private_fork_for(identity: ChannelIdentity, run_id: str, key: str) -> opening.Opening:
    """A Responses create naming no previous response, answered without a stream: its new
    session's key (the response id) is shown first in the reply."""
    return attrs.evolve(
        opening_for(identity, run_id, scope=None),
        fork_scope=ScopeKey(None, f"responses:key:{key}"),
        session_key=key,
        last_seen=None,
        create_at_finish=True,
    )


async def known(store: Store, identity: ChannelIdentity) -> str:
    """Make ``identity`` known (its key issued by a first turn) and answer its key."""
    first = await store.open_turn(opening_for(identity, "r0"))
    assert isinstance(first, opening.Opened)
    await store.finish_run("s_r0", "r0", None, 10.5)
    assert first.session_ref.isolation_key is not None
    return first.session_ref.isolation_key


async def opened_privately_and_saved(store: Store, outcome: opening.Outcome) -> None:
    """``outcome`` opened a private session (run ``r1``, session ``s_r1``): save it, and find
    it stored."""
    assert isinstance(outcome, opening.Opened) and outcome.creation is not None
    assert isinstance(outcome.lease, leases.Granted)
    finished = await store.finish_turn(
        "s_r1", "r1", outcome.session, 11.0, TurnWrites(), creation=outcome.creation
    )
    assert finished.saved
    assert await store.load_session("s_r1") is not None


async def test_a_private_session_is_written_by_the_save_not_by_the_opening(
    store: Store,
) -> None:
    key = await known(store, ALICE)
    opened = await store.open_turn(private_fork_for(ALICE, "r1", "resp_1"))
    assert isinstance(opened, opening.Opened) and isinstance(opened.lease, leases.Granted)
    assert opened.creation is not None and opened.session is not None
    assert opened.session_ref == SessionRef(key, "s_r1", "resp_1")
    scope = ScopeKey(key, "responses:key:resp_1")
    # nothing of it is stored while the target runs
    assert await store.load_alias(scope) is None
    assert await store.load_session("s_r1") is None

    saved = attrs.evolve(opened.session, state={"history": ["one"]}, turns=1)
    assert await store.finish_turn(
        "s_r1", "r1", saved, 11.0, TurnWrites(), creation=opened.creation
    ) == FinishedTurn(saved=True)
    alias = await store.load_alias(scope)
    assert alias is not None and alias.session_id == "s_r1"
    stored = await store.load_session("s_r1")
    assert stored is not None and stored.state == {"history": ["one"]} and stored.turns == 1
    # its lease was released: the next turn on it is granted at once, on the saved state
    next_turn = await store.apply_lease_event("s_r1", leases.Arrive("r2", ENQUEUE, 12.0, TTL))
    assert isinstance(next_turn.decision, leases.Granted)
    assert next_turn.session is not None and next_turn.session.state == {"history": ["one"]}


async def test_a_private_session_whose_run_failed_is_created_empty(store: Store) -> None:
    await known(store, ALICE)
    opened = await store.open_turn(private_fork_for(ALICE, "r1", "resp_1"))
    assert isinstance(opened, opening.Opened) and opened.creation is not None
    assert not await store.finish_run("s_r1", "r1", None, 11.0, creation=opened.creation)
    stored = await store.load_session("s_r1")
    assert stored is not None and stored.state is None and stored.turns == 0
    answer = await store.apply_lease_event("s_r1", leases.Arrive("r2", ENQUEUE, 12.0, TTL))
    assert isinstance(answer.decision, leases.Granted)


async def test_a_private_session_whose_key_was_taken_meanwhile_saves_nothing(
    store: Store,
) -> None:
    await known(store, ALICE)
    opened = await store.open_turn(private_fork_for(ALICE, "r1", "resp_1"))
    assert isinstance(opened, opening.Opened) and opened.creation is not None
    assert opened.session is not None
    # a channel that broke its promise: another turn created a session under that key
    other = await store.open_turn(
        attrs.evolve(private_fork_for(ALICE, "r2", "resp_1"), create_at_finish=False)
    )
    assert isinstance(other, opening.Opened) and other.session_ref.session_id == "s_r2"
    saved = attrs.evolve(opened.session, state={"history": ["lost"]}, turns=1)
    assert not await store.finish_run("s_r1", "r1", saved, 11.0, creation=opened.creation)
    created = opened.creation.alias
    alias = await store.load_alias(ScopeKey(created.owner, created.qualifier))
    assert alias is not None and alias.session_id == "s_r2"  # the other's stays
    assert await store.load_session("s_r1") is None


async def test_a_private_session_of_a_stranger_is_written_when_the_turn_opens(
    store: Store,
) -> None:
    # The stranger's key must be issued before the target runs: the session comes with it.
    opened = await store.open_turn(private_fork_for(ALICE, "r1", "resp_1"))
    assert isinstance(opened, opening.Opened) and isinstance(opened.lease, leases.Granted)
    assert opened.creation is None
    assert opened.session_ref.isolation_key == "ik_r1"
    alias = await store.load_alias(ScopeKey("ik_r1", "responses:key:resp_1"))
    assert alias is not None and alias.session_id == "s_r1"
    assert await store.finish_run("s_r1", "r1", opened.session, 11.0)


# --- recording a background run in one trip (``opening`` rule 6) --------------------


def background_opening_for(
    identity: ChannelIdentity, token: str, **options: Any
) -> opening.Opening:
    plan = opening_for(identity, token, **options)
    request = attrs.evolve(make_run(token).request, identity=identity, channel=identity.channel)
    return attrs.evolve(plan, background=opening.BackgroundRun(request, max_attempts=2))


async def test_a_background_opening_records_the_run_with_its_session_and_no_lease(
    store: Store,
) -> None:
    opened = await store.open_turn(background_opening_for(ALICE, "run_1"))
    assert isinstance(opened, opening.Opened)
    assert opened.lease is None and opened.session is None
    assert opened.session_ref == SessionRef("ik_run_1", "s_run_1", None)
    assert opened.run is not None
    assert await store.get_run("run_1") == opened.run
    assert (opened.run.session_id, opened.run.isolation_key) == ("s_run_1", "ik_run_1")
    assert opened.run.status == RunStatus.QUEUED and opened.run.max_attempts == 2
    assert (await store.load_context(ALICE, ScopeKey(None, "direct"))).alias is not None
    assert [s.channel for s in await store.list_last_seen("ik_run_1")] == ["telegram"]
    # No lease was taken: the worker's arrival, when it runs the turn, is granted at once.
    answer = await store.apply_lease_event("s_run_1", leases.Arrive("run_1", ENQUEUE, 11.0, TTL))
    assert isinstance(answer.decision, leases.Granted)
    # A returning user's next background run goes to the same session.
    again = await store.open_turn(background_opening_for(ALICE, "run_2", now=12.0))
    assert isinstance(again, opening.Opened) and again.run is not None
    assert again.run.session_id == "s_run_1" and again.run.isolation_key == "ik_run_1"


async def test_a_refused_background_opening_records_no_run(store: Store) -> None:
    closed = ChannelAccess(allowlist=NativeIdAllowlist({"telegram": ["someone-else"]}))
    refused = await store.open_turn(background_opening_for(ALICE, "run_1", access=closed))
    assert isinstance(refused, opening.Refused)
    assert await store.get_run("run_1") is None
    assert await store.load_context(ALICE, ScopeKey(None, "direct")) == RequestContext(None, None)


async def test_a_background_opening_with_a_token_in_use_writes_nothing(store: Store) -> None:
    await store.create_run(make_run("run_1"))
    with pytest.raises(ValueError, match="run_1"):
        await store.open_turn(background_opening_for(BOB, "run_1"))
    assert await store.load_context(BOB, ScopeKey(None, "direct")) == RequestContext(None, None)
    assert await store.list_last_seen("ik_run_1") == []
