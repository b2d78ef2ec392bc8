"""The store contract for last-seen records and the delivery outbox, on every store."""

from __future__ import annotations

import anyio
import attrs
import pytest

from agenthost.sansio_core import background, delivery, leases
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, FailureKind
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    HostMessage,
    MultitaskStrategy,
    RunStatus,
)
from agenthost.stores.base import (
    ChannelRecord,
    DeliveryNotFound,
    FinishedTurn,
    RunNotFound,
    Store,
    TurnWrites,
)

pytestmark = pytest.mark.anyio

ALICE = ChannelIdentity("chat", "alice", {"display": "Alice"})
ALICE_ON_INVOKE = ChannelIdentity("invocations", "alice-inv")
BOB = ChannelIdentity("chat", "bob")


def make_delivery(delivery_id: str, *, created_at: float = 10.0, echo: bool = False) -> Delivery:
    return Delivery(
        delivery_id=delivery_id,
        isolation_key="k1",
        channel="chat",
        identity=ALICE,
        conversation_id=None,
        reply={"text": "the answer"},
        echo={"text": "You, via Invocations: hi"} if echo else None,
        created_at=created_at,
        next_attempt_at=created_at,
    )


def make_run(token: str) -> background.RunRecord:
    request = ChannelRequest(channel="invocations", identity=ALICE, input=(HostMessage.user("x"),))
    return background.new_run(
        token=token,
        request=request,
        isolation_key="k1",
        session_id=None,
        session_key=None,
        now=1.0,
        max_attempts=3,
    )


# --- last seen ------------------------------------------------------------------------


async def test_last_seen_is_one_row_per_conversation_newest_first(store: Store) -> None:
    await store.issue_isolation_key(ALICE, "k1", 1.0)
    await store.record_last_seen("k1", LastSeen("chat", ALICE, None, 5.0))
    await store.record_last_seen("k1", LastSeen("chat", ALICE, "group-1", 6.0))
    await store.record_last_seen("k1", LastSeen("chat", ALICE, None, 7.0))  # upsert
    seen = await store.list_last_seen("k1")
    assert [(s.conversation_id, s.seen_at) for s in seen] == [(None, 7.0), ("group-1", 6.0)]
    assert seen[0].identity == ALICE
    assert seen[0].identity.attributes == {"display": "Alice"}
    assert await store.list_last_seen("nobody") == []


async def test_last_seen_follows_the_identity_through_a_link(store: Store) -> None:
    await store.issue_isolation_key(ALICE_ON_INVOKE, "k-inv", 1.0)
    await store.issue_isolation_key(ALICE, "k-chat", 1.0)
    await store.record_last_seen("k-chat", LastSeen("chat", ALICE, None, 5.0))
    await store.record_last_seen("k-inv", LastSeen("invocations", ALICE_ON_INVOKE, None, 6.0))
    result = await store.link_identities(
        ALICE_ON_INVOKE, ALICE, LinkRules(), source="test", now=7.0
    )
    assert result.linked
    seen = await store.list_last_seen("k-inv")
    assert [s.channel for s in seen] == ["invocations", "chat"]
    assert await store.list_last_seen("k-chat") == []


async def test_last_seen_of_an_identity_without_a_stored_key(store: Store) -> None:
    # A custom resolver: the store never issued a key; the recorded key is the owner.
    await store.record_last_seen("app-key", LastSeen("chat", BOB, None, 3.0))
    assert [s.identity for s in await store.list_last_seen("app-key")] == [BOB]


# --- the outbox -------------------------------------------------------------------------


async def test_recording_the_same_id_twice_keeps_the_first(store: Store) -> None:
    first = make_delivery("d1")
    await store.schedule_deliveries([first])
    await store.schedule_deliveries([attrs.evolve(first, reply={"text": "changed"})])
    stored = await store.get_delivery("d1")
    assert stored == first
    assert stored is not None and stored.identity.attributes == {"display": "Alice"}


async def test_complete_run_with_deliveries_is_one_transaction(store: Store) -> None:
    await store.create_run(make_run("t1"))
    await store.apply_run_event("t1", background.Start("me", 2.0, 30.0))
    done = await store.complete_run_with_deliveries(
        "t1",
        background.Complete("me", 3.0, {"text": "ok"}, 60.0),
        [make_delivery("t1:chat:alice"), make_delivery("t1:chat:bob")],
    )
    assert done.status.value == "completed"
    assert {d.delivery_id for d in await store.list_deliveries()} == {
        "t1:chat:alice",
        "t1:chat:bob",
    }


async def test_a_refused_completion_records_no_delivery(store: Store) -> None:
    await store.create_run(make_run("t2"))  # queued: Complete is refused
    with pytest.raises(background.RunTransitionRefused):
        await store.complete_run_with_deliveries(
            "t2", background.Complete("me", 3.0, {"text": "ok"}, 60.0), [make_delivery("x")]
        )
    assert await store.get_delivery("x") is None
    with pytest.raises(RunNotFound):
        await store.complete_run_with_deliveries(
            "missing", background.Complete("me", 3.0, {}, 60.0), []
        )


async def test_claim_takes_due_deliveries_oldest_first(store: Store) -> None:
    await store.schedule_deliveries(
        [
            make_delivery("late", created_at=50.0),
            make_delivery("a", created_at=10.0),
            make_delivery("b", created_at=20.0),
        ]
    )
    assert await store.next_delivery_due() == 10.0
    claimed = await store.claim_due_deliveries("w1", 30.0, 5.0, 10)
    assert [d.delivery_id for d in claimed] == ["a", "b"]
    assert all(d.status is DeliveryStatus.SENDING and d.owner == "w1" for d in claimed)
    assert await store.claim_due_deliveries("w2", 30.0, 5.0, 10) == []
    assert [d.delivery_id for d in await store.claim_due_deliveries("w2", 60.0, 5.0, 1)] == ["late"]


async def test_two_concurrent_claimers_never_claim_the_same_delivery(store: Store) -> None:
    await store.schedule_deliveries([make_delivery(f"d{i:03}") for i in range(60)])
    claims: dict[str, list[str]] = {}

    async def claimer(owner: str) -> None:
        mine: list[str] = []
        while True:
            got = await store.claim_due_deliveries(owner, 100.0, 30.0, 7)
            if not got:
                break
            mine.extend(d.delivery_id for d in got)
        claims[owner] = mine

    async with anyio.create_task_group() as tg:
        for owner in ("w1", "w2", "w3"):
            tg.start_soon(claimer, owner)
    everything = [i for mine in claims.values() for i in mine]
    assert sorted(everything) == sorted(f"d{i:03}" for i in range(60))
    assert len(set(everything)) == len(everything)


async def test_delivery_events_go_through_the_core(store: Store) -> None:
    await store.schedule_deliveries([make_delivery("d", echo=True)])
    [claimed] = await store.claim_due_deliveries("w", 20.0, 5.0, 10)
    assert claimed.attempts == 1 and claimed.phase == "echo"
    echoed = await store.apply_delivery_event("d", delivery.EchoSent("w", 21.0))
    assert echoed.echo_sent
    with pytest.raises(delivery.DeliveryTransitionRefused):
        await store.apply_delivery_event("d", delivery.Sent("someone-else", 22.0))
    failed = await store.apply_delivery_event(
        "d", delivery.SendFailed("w", 22.0, FailureKind.TRANSIENT, "http 500", 0.5, 4.0)
    )
    assert failed.status is DeliveryStatus.FAILED and failed.next_attempt_at == 26.0
    assert await store.next_delivery_due() == 26.0
    with pytest.raises(DeliveryNotFound):
        await store.apply_delivery_event("nope", delivery.Replay(1.0))
    stored = await store.get_delivery("d")
    assert stored == failed and stored.echo_sent  # the cursor survives the retry


async def test_many_delivery_events_in_one_call_answer_each_in_its_place(store: Store) -> None:
    await store.schedule_deliveries(
        [make_delivery("ok"), make_delivery("echoed", echo=True), make_delivery("busy")]
    )
    await store.claim_due_deliveries("w", 20.0, 5.0, 10)
    answers = await store.apply_delivery_events(
        [
            ("ok", delivery.Sent("w", 21.0)),
            ("nope", delivery.Sent("w", 21.0)),
            ("busy", delivery.Sent("someone-else", 21.0)),
            # two steps on one delivery: the second sees the first
            ("echoed", delivery.EchoSent("w", 21.0)),
            ("echoed", delivery.Sent("w", 22.0)),
            ("busy", delivery.SendFailed("w", 22.0, FailureKind.PERMANENT, "http 403", 0.0)),
        ]
    )
    ok, nope, refused, echoed, echoed_sent, busy = answers
    assert isinstance(ok, Delivery) and ok.status is DeliveryStatus.DELIVERED
    assert isinstance(nope, DeliveryNotFound)
    assert isinstance(refused, delivery.DeliveryTransitionRefused)
    assert isinstance(echoed, Delivery) and echoed.echo_sent
    assert echoed.status is DeliveryStatus.SENDING
    assert isinstance(echoed_sent, Delivery) and echoed_sent.status is DeliveryStatus.DELIVERED
    assert isinstance(busy, Delivery) and busy.status is DeliveryStatus.DEAD
    # what is stored is what was answered, the refused step having written nothing
    assert await store.get_delivery("ok") == ok
    assert await store.get_delivery("echoed") == echoed_sent
    assert await store.get_delivery("busy") == busy
    assert await store.get_delivery("nope") is None
    assert await store.apply_delivery_events([]) == []


async def test_concurrent_batches_over_the_same_deliveries_both_apply(store: Store) -> None:
    ids = [f"d{i:02}" for i in range(20)]
    await store.schedule_deliveries([make_delivery(i) for i in ids])
    await store.claim_due_deliveries("w", 20.0, 5.0, 20)
    # One batch renews in id order, the other in reverse, at once: a store that locked rows
    # in step order could deadlock; both must apply, each renewal to every delivery.
    answers: dict[str, list[object]] = {}

    async def renew(name: str, order: list[str], now: float) -> None:
        answers[name] = list(
            await store.apply_delivery_events([(i, delivery.Renew("w", now, 5.0)) for i in order])
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(renew, "forward", ids, 21.0)
        tg.start_soon(renew, "backward", ids[::-1], 22.0)
    assert all(isinstance(a, Delivery) for found in answers.values() for a in found)
    expiries = {d.lease_expires_at for d in await store.list_deliveries(limit=50)}
    assert expiries <= {26.0, 27.0} and len(await store.list_deliveries(limit=50)) == 20


async def test_list_and_purge_by_status(store: Store) -> None:
    await store.schedule_deliveries([make_delivery("ok"), make_delivery("bad")])
    await store.claim_due_deliveries("w", 20.0, 5.0, 10)
    await store.apply_delivery_event("ok", delivery.Sent("w", 21.0))
    await store.apply_delivery_event(
        "bad", delivery.SendFailed("w", 21.0, FailureKind.PERMANENT, "http 403", 0.0)
    )
    dead = await store.list_deliveries([DeliveryStatus.DEAD])
    assert [(d.delivery_id, d.last_error) for d in dead] == [("bad", "http 403")]
    assert len(await store.list_deliveries(limit=1)) == 1
    assert await store.purge_deliveries([DeliveryStatus.DEAD]) == 1
    assert [d.delivery_id for d in await store.list_deliveries()] == ["ok"]
    # delivered at 21.0: kept by an older cutoff, purged by a later one
    assert await store.purge_deliveries([DeliveryStatus.DELIVERED], updated_before=20.5) == 0
    assert await store.purge_deliveries([DeliveryStatus.DELIVERED], updated_before=21.0) == 1
    assert await store.next_delivery_due() is None
    assert await store.list_deliveries() == []


# --- a turn's writes in one commit ---------------------------------------------------------


async def held_session(store: Store, run_id: str) -> SessionRecord:
    await store.create_session(SessionAlias("k", "direct", "s1", 1, 1.0), 1.0)
    answer = await store.apply_lease_event(
        "s1", leases.Arrive(run_id, MultitaskStrategy.ENQUEUE, 2.0, 30.0)
    )
    assert isinstance(answer.decision, leases.Granted) and answer.session is not None
    return answer.session


async def test_finish_turn_saves_completes_and_queues_in_one_commit(store: Store) -> None:
    run = make_run("t1")
    await store.create_run(run)
    await store.apply_run_event("t1", background.Start("w", 3.0, 30.0))
    session = await held_session(store, "t1")
    complete = background.Complete("w", 4.0, {"text": "hi"}, 60.0)
    record = ChannelRecord("test", "reply", "t1", {"text": "hi"})
    finished = await store.finish_turn(
        "s1",
        "t1",
        attrs.evolve(session, state={"turns": ["hi"]}, turns=1),
        4.0,
        TurnWrites(("t1", complete), (make_delivery("d1"),), (record,)),
    )
    assert finished.saved and finished.run is not None and finished.run_refused is None
    assert finished.run.status is RunStatus.COMPLETED
    assert (await store.get_run("t1")).status is RunStatus.COMPLETED  # type: ignore[union-attr]
    stored = await store.load_session("s1")
    assert stored is not None and stored.state == {"turns": ["hi"]}
    assert await store.get_delivery("d1") is not None
    assert await store.get_channel_record("test", "reply", "t1") is not None


async def test_finish_turn_refused_run_keeps_its_deliveries_out(store: Store) -> None:
    await store.create_run(make_run("t1"))
    await store.apply_run_event("t1", background.Cancel(3.0, 60.0))  # cancelled meanwhile
    session = await held_session(store, "t1")
    complete = background.Complete("w", 4.0, {"text": "hi"}, 60.0)
    finished = await store.finish_turn(
        "s1", "t1", session, 4.0, TurnWrites(("t1", complete), (make_delivery("d1"),))
    )
    assert finished.run is None and finished.run_refused
    assert finished.saved  # the turn itself still held its lease
    assert await store.get_delivery("d1") is None
    assert (await store.get_run("t1")).status is RunStatus.CANCELLED  # type: ignore[union-attr]


async def test_finish_turn_of_a_stateless_turn_writes_only_its_writes(store: Store) -> None:
    finished = await store.finish_turn(
        None, "r1", None, 4.0, TurnWrites(deliveries=(make_delivery("d1"),))
    )
    assert finished == FinishedTurn(saved=False)
    assert await store.get_delivery("d1") is not None


async def test_list_newest_first_gives_the_newest(store: Store) -> None:
    await store.schedule_deliveries(
        [make_delivery(f"d{n}", created_at=float(n)) for n in (3, 1, 4, 2)]
    )
    newest = await store.list_deliveries(limit=2, newest_first=True)
    assert [d.delivery_id for d in newest] == ["d4", "d3"]
    oldest = await store.list_deliveries(limit=2)
    assert [d.delivery_id for d in oldest] == ["d1", "d2"]
