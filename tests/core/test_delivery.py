"""The delivery lifecycle: each transition, refusals, backoff, recovery, random sequences."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import (
    DELIVERY_TRANSITIONS,
    Claim,
    Delivery,
    DeliveryStatus,
    DeliveryTransitionRefused,
    EchoSent,
    FailureKind,
    Interrupted,
    Recover,
    Replay,
    RetryPolicy,
    SendFailed,
    Sent,
)
from agenthost.sansio_core.types import ChannelIdentity

SCHEDULED = DeliveryStatus.SCHEDULED
SENDING = DeliveryStatus.SENDING
DELIVERED = DeliveryStatus.DELIVERED
UNKNOWN = DeliveryStatus.UNKNOWN
FAILED = DeliveryStatus.FAILED
DEAD = DeliveryStatus.DEAD

TRANSIENT = FailureKind.TRANSIENT
PERMANENT = FailureKind.PERMANENT

LEASE = 30.0
IDENTITY = ChannelIdentity("telegram", "42")
ECHO = {"text": "You, via Responses: summarise the report"}
REPLY = {"text": "Here is the summary."}


def scheduled(
    *, echo: bool = True, max_attempts: int = 3, now: float = 100.0, cap: float = 60.0
) -> Delivery:
    return Delivery(
        delivery_id="dl_1",
        isolation_key="ik_1",
        channel="telegram",
        identity=IDENTITY,
        conversation_id="chat_42",
        reply=REPLY,
        echo=ECHO if echo else None,
        created_at=now,
        # a budget too long to matter here: these tests count attempts (the time budget
        # has its own tests in test_delivery_durability.py)
        retry=RetryPolicy(
            max_attempts=max_attempts, base_seconds=1.0, cap_seconds=cap, budget_seconds=1e9
        ),
        next_attempt_at=now,
        updated_at=now,
    )


def sending(
    *, owner: str = "w1", now: float = 110.0, echo: bool = True, max_attempts: int = 3
) -> Delivery:
    return delivery.apply(scheduled(echo=echo, max_attempts=max_attempts), Claim(owner, now, LEASE))


def transient(
    owner: str = "w1", now: float = 120.0, *, jitter: float, retry_after: float | None = None
) -> SendFailed:
    return SendFailed(owner, now, TRANSIENT, "503 from the platform", jitter, retry_after)


def failed(*, max_attempts: int = 3, echo: bool = True) -> Delivery:
    """Failed once (jitter 0: due again half a second later)."""
    d = sending(echo=echo, max_attempts=max_attempts)
    return delivery.apply(d, transient(jitter=0.0))


def dead() -> Delivery:
    return delivery.apply(sending(), SendFailed("w1", 120.0, PERMANENT, "403 blocked", 0.5))


def unknown() -> Delivery:
    return delivery.apply(sending(now=110.0), Recover(110.0 + LEASE, idempotent_push=False))


def delivered(*, echo: bool = True) -> Delivery:
    d = sending(echo=echo)
    if echo:
        d = delivery.apply(d, EchoSent("w1", 115.0))
    return delivery.apply(d, Sent("w1", 120.0))


# --- each transition ------------------------------------------------------------------


def test_new_delivery_is_scheduled_and_due() -> None:
    d = scheduled()
    assert d.status is SCHEDULED
    assert d.attempts == 0
    assert d.owner is None
    assert d.echo_sent is False
    assert d.phase == "echo"
    assert d.is_due(100.0)
    assert not d.is_due(99.9)
    assert not d.is_abandoned(1e9)
    assert scheduled(echo=False).phase == "reply"


def test_claim_counts_the_attempt_before_anything_is_sent() -> None:
    d = delivery.apply(scheduled(), Claim("w1", 110.0, LEASE))
    assert d.status is SENDING
    assert d.attempts == 1
    assert d.owner == "w1"
    assert d.lease_expires_at == 140.0
    assert d.updated_at == 110.0
    assert d.phase == "echo"
    assert not d.is_due(1e9)
    assert not d.is_abandoned(139.9)
    assert d.is_abandoned(140.0)


def test_echo_sent_moves_the_cursor_to_the_reply() -> None:
    d = delivery.apply(sending(), EchoSent("w1", 115.0))
    assert d.status is SENDING
    assert d.echo_sent is True
    assert d.phase == "reply"
    assert d.attempts == 1
    assert d.owner == "w1"
    assert d.updated_at == 115.0


@pytest.mark.parametrize("echo", [True, False])
def test_sent_delivers(echo: bool) -> None:
    d = delivered(echo=echo)
    assert d.status is DELIVERED
    assert d.delivered_at == 120.0
    assert d.updated_at == 120.0
    assert d.owner is None
    assert d.lease_expires_at is None
    assert d.last_error is None
    assert d.attempts == 1
    assert d.echo_sent is echo


def test_sent_after_a_failed_attempt_clears_the_error() -> None:
    d = delivery.apply(failed(echo=False), Claim("w2", 130.0, LEASE))
    d = delivery.apply(d, Sent("w2", 131.0))
    assert d.status is DELIVERED
    assert d.last_error is None
    assert d.attempts == 2


def test_transient_failure_schedules_a_retry_after_backoff() -> None:
    d = delivery.apply(sending(), transient(now=120.0, jitter=0.5))
    assert d.status is FAILED
    assert d.last_error == "503 from the platform"
    assert d.owner is None
    assert d.lease_expires_at is None
    assert d.updated_at == 120.0
    assert d.attempts == 1
    # attempt 1: ceiling base * 2**0 = 1.0; equal jitter: half of it plus half of the rest
    assert d.next_attempt_at == pytest.approx(120.75)
    assert not d.is_due(120.7)
    assert d.is_due(120.75)


def test_a_failed_delivery_is_claimed_again_when_due() -> None:
    d = delivery.apply(sending(), transient(now=120.0, jitter=0.5))
    with pytest.raises(DeliveryTransitionRefused, match="not due yet"):
        delivery.apply(d, Claim("w2", 120.7, LEASE))
    again = delivery.apply(d, Claim("w2", 120.75, LEASE))
    assert again.status is SENDING
    assert again.attempts == 2
    assert again.owner == "w2"
    assert again.lease_expires_at == 150.75


def test_a_retry_after_the_echo_skips_it() -> None:
    d = delivery.apply(sending(), EchoSent("w1", 115.0))
    d = delivery.apply(d, transient(now=120.0, jitter=0.0))
    d = delivery.apply(d, Claim("w2", 121.0, LEASE))
    assert d.phase == "reply"
    with pytest.raises(DeliveryTransitionRefused, match="no echo is pending"):
        delivery.apply(d, EchoSent("w2", 122.0))
    assert delivery.apply(d, Sent("w2", 122.0)).status is DELIVERED


def test_permanent_failure_is_dead_at_once_with_the_reason() -> None:
    d = sending(max_attempts=5)
    assert d.attempts < d.retry.max_attempts
    gone = delivery.apply(d, SendFailed("w1", 120.0, PERMANENT, "403: bot was blocked", 0.3))
    assert gone.status is DEAD
    assert gone.last_error == "403: bot was blocked"
    assert gone.owner is None
    assert gone.lease_expires_at is None
    assert gone.attempts == 1
    assert not gone.is_due(1e9)


def test_transient_failure_on_the_last_attempt_is_dead() -> None:
    d = scheduled(max_attempts=2)
    now = 100.0
    d = delivery.apply(d, Claim("w1", now, LEASE))
    d = delivery.apply(d, transient(now=now, jitter=0.0))
    assert d.status is FAILED
    d = delivery.apply(d, Claim("w1", now + 0.5, LEASE))
    assert d.attempts == 2
    d = delivery.apply(d, transient(now=now + 1, jitter=0.0, retry_after=5.0))
    assert d.status is DEAD
    assert d.last_error == "503 from the platform"
    assert d.attempts == 2


def test_interrupted_gives_the_attempt_back() -> None:
    d = delivery.apply(sending(), EchoSent("w1", 115.0))
    back = delivery.apply(d, Interrupted("w1", 116.0))
    assert back.status is SCHEDULED
    assert back.attempts == 0
    assert back.owner is None
    assert back.lease_expires_at is None
    assert back.echo_sent is True  # the cursor survives: the echo is not sent again
    assert back.updated_at == 116.0
    assert back.is_due(116.0)
    again = delivery.apply(back, Claim("w2", 117.0, LEASE))
    assert again.attempts == 1
    assert again.phase == "reply"


def test_interrupting_every_attempt_never_exhausts_them() -> None:
    d = scheduled(max_attempts=1)
    for n in range(10):
        d = delivery.apply(d, Claim("w1", 100.0 + n, LEASE))
        d = delivery.apply(d, Interrupted("w1", 100.5 + n))
    assert d.status is SCHEDULED
    assert d.attempts == 0


# --- recovery ---------------------------------------------------------------------------


@pytest.mark.parametrize("idempotent", [True, False])
def test_recover_leaves_a_live_send_alone(idempotent: bool) -> None:
    d = sending(now=110.0)  # lease until 140
    assert delivery.apply(d, Recover(139.9, idempotent)) == d


@pytest.mark.parametrize("idempotent", [True, False])
def test_recover_leaves_scheduled_and_failed_alone(idempotent: bool) -> None:
    for d in (scheduled(), failed()):
        assert delivery.apply(d, Recover(1e9, idempotent)) == d


def test_recover_of_an_abandoned_send_is_unknown() -> None:
    d = delivery.apply(sending(now=110.0), EchoSent("w1", 111.0))
    lost = delivery.apply(d, Recover(140.0, idempotent_push=False))
    assert lost.status is UNKNOWN
    assert lost.owner is None
    assert lost.lease_expires_at is None
    assert lost.attempts == 1
    assert lost.echo_sent is True
    assert lost.updated_at == 140.0
    assert lost.last_error is not None
    assert "may have it" in lost.last_error
    assert not lost.is_due(1e9)  # never resent blindly
    with pytest.raises(DeliveryTransitionRefused, match="no such transition"):
        delivery.apply(lost, Claim("w2", 1e9, LEASE))


def test_recover_of_an_abandoned_idempotent_push_schedules_it_again() -> None:
    d = sending(now=110.0)
    again = delivery.apply(d, Recover(140.0, idempotent_push=True))
    assert again.status is SCHEDULED
    assert again.owner is None
    assert again.lease_expires_at is None
    assert again.attempts == 1  # spent: the sender died mid-send
    assert again.is_due(140.0)
    assert again.last_error is not None


def test_recover_of_an_idempotent_push_out_of_attempts_is_unknown() -> None:
    # Scheduling it again would let the next claim exceed max_attempts.
    d = sending(now=110.0, max_attempts=1)
    assert d.attempts == d.retry.max_attempts
    lost = delivery.apply(d, Recover(140.0, idempotent_push=True))
    assert lost.status is UNKNOWN
    assert lost.attempts == 1


def test_the_owner_of_a_recovered_delivery_is_refused() -> None:
    d = sending(owner="w1", now=110.0)
    d = delivery.apply(d, Recover(140.0, idempotent_push=True))
    d = delivery.apply(d, Claim("w2", 141.0, LEASE))
    with pytest.raises(DeliveryTransitionRefused, match="another worker") as refused:
        delivery.apply(d, Sent("w1", 142.0))
    assert refused.value.delivery == d
    assert refused.value.reason == "another worker holds it"


# --- replay -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [dead, unknown])
def test_replay_resets_the_attempts(make: object) -> None:
    d = make()  # type: ignore[operator]
    assert d.attempts == 1
    replayed = delivery.apply(d, Replay(500.0))
    assert replayed.status is SCHEDULED
    assert replayed.attempts == 0
    assert replayed.next_attempt_at == 500.0
    assert replayed.updated_at == 500.0
    assert replayed.is_due(500.0)
    assert replayed.echo_sent == d.echo_sent
    claimed = delivery.apply(replayed, Claim("w9", 500.0, LEASE))
    assert claimed.attempts == 1


def test_replay_keeps_a_sent_echo() -> None:
    d = delivery.apply(sending(), EchoSent("w1", 115.0))
    d = delivery.apply(d, SendFailed("w1", 116.0, PERMANENT, "400 bad chat", 0.0))
    d = delivery.apply(delivery.apply(d, Replay(200.0)), Claim("w1", 200.0, LEASE))
    assert d.phase == "reply"


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        EchoSent("w2", 120.0),
        Sent("w2", 120.0),
        SendFailed("w2", 120.0, TRANSIENT, "x", 0.0),
        SendFailed("w2", 120.0, PERMANENT, "x", 0.0),
        Interrupted("w2", 120.0),
    ],
)
def test_only_the_owner_may_act_on_a_sending_delivery(event: delivery.DeliveryEvent) -> None:
    d = sending(owner="w1")
    with pytest.raises(DeliveryTransitionRefused, match="another worker") as refused:
        delivery.apply(d, event)
    assert refused.value.delivery == d


def test_sent_before_the_echo_is_refused() -> None:
    with pytest.raises(DeliveryTransitionRefused, match="the echo has not been sent"):
        delivery.apply(sending(echo=True), Sent("w1", 120.0))


def test_echo_sent_without_an_echo_is_refused() -> None:
    with pytest.raises(DeliveryTransitionRefused, match="no echo is pending"):
        delivery.apply(sending(echo=False), EchoSent("w1", 120.0))


def test_echo_sent_twice_is_refused() -> None:
    d = delivery.apply(sending(), EchoSent("w1", 115.0))
    with pytest.raises(DeliveryTransitionRefused, match="no echo is pending"):
        delivery.apply(d, EchoSent("w1", 116.0))


def test_claim_before_it_is_due_is_refused() -> None:
    d = scheduled(now=100.0)
    with pytest.raises(DeliveryTransitionRefused, match="not due yet") as refused:
        delivery.apply(d, Claim("w1", 99.0, LEASE))
    assert refused.value.delivery == d
    assert str(refused.value) == "Claim refused on scheduled delivery: not due yet"


@pytest.mark.parametrize("make", [delivered, dead, unknown, sending])
def test_claim_of_a_delivery_that_is_not_waiting_is_refused(make: object) -> None:
    d = make()  # type: ignore[operator]
    with pytest.raises(DeliveryTransitionRefused, match="no such transition"):
        delivery.apply(d, Claim("w2", 1e9, LEASE))


@pytest.mark.parametrize("make", [scheduled, failed, sending, delivered])
def test_replay_of_a_live_or_delivered_delivery_is_refused(make: object) -> None:
    with pytest.raises(DeliveryTransitionRefused, match="no such transition"):
        delivery.apply(make(), Replay(1e9))  # type: ignore[operator]


@pytest.mark.parametrize("make", [scheduled, failed, dead, unknown])
@pytest.mark.parametrize(
    "event",
    [
        EchoSent("w1", 200.0),
        Sent("w1", 200.0),
        SendFailed("w1", 200.0, TRANSIENT, "x", 0.0),
        Interrupted("w1", 200.0),
    ],
)
def test_sender_events_need_a_sending_delivery(make: object, event: delivery.DeliveryEvent) -> None:
    with pytest.raises(DeliveryTransitionRefused, match="no such transition"):
        delivery.apply(make(), event)  # type: ignore[operator]


@pytest.mark.parametrize(
    "event",
    [
        Claim("w1", 1e9, LEASE),
        EchoSent("w1", 200.0),
        Sent("w1", 200.0),
        SendFailed("w1", 200.0, PERMANENT, "x", 0.0),
        Interrupted("w1", 200.0),
        Recover(1e9, idempotent_push=True),
        Recover(1e9, idempotent_push=False),
        Replay(1e9),
    ],
)
def test_delivered_is_final(event: delivery.DeliveryEvent) -> None:
    d = delivered()
    with pytest.raises(DeliveryTransitionRefused):
        delivery.apply(d, event)


def test_every_table_row_is_reachable() -> None:
    seen: set[tuple[DeliveryStatus, type]] = set()

    def step(d: Delivery, event: delivery.DeliveryEvent) -> Delivery:
        seen.add((d.status, type(event)))
        return delivery.apply(d, event)

    d = step(scheduled(), Recover(100.0, idempotent_push=False))  # S, Recover
    d = step(d, Claim("w1", 100.0, LEASE))  # S, Claim
    d = step(d, Recover(101.0, idempotent_push=False))  # G, Recover (still leased)
    d = step(d, EchoSent("w1", 102.0))  # G, EchoSent
    d = step(d, delivery.PartSent("w1", 102.2, 1))  # G, PartSent
    d = step(d, delivery.Renew("w1", 102.4, LEASE))  # G, Renew
    d = step(d, transient(now=103.0, jitter=0.0))  # G, SendFailed -> F
    d = step(d, Recover(103.0, idempotent_push=False))  # F, Recover
    d = step(d, Claim("w1", 103.5, LEASE))  # F, Claim
    d = step(d, Interrupted("w1", 104.0))  # G, Interrupted
    d = step(d, Claim("w1", 105.0, LEASE))
    d = step(d, Recover(105.0 + LEASE, idempotent_push=False))  # G, Recover -> U
    assert d.status is UNKNOWN
    d = step(d, Replay(200.0))  # U, Replay
    d = step(d, Claim("w1", 200.0, LEASE))
    d = step(d, SendFailed("w1", 201.0, PERMANENT, "blocked", 0.0))
    assert d.status is DEAD
    d = step(d, Replay(300.0))  # X, Replay
    d = step(d, Claim("w1", 300.0, LEASE))
    d = step(d, Sent("w1", 301.0))  # G, Sent
    assert d.status is DELIVERED
    assert seen == set(DELIVERY_TRANSITIONS)


def test_each_row_leads_only_where_the_table_says() -> None:
    # the three outcomes of (sending, Recover) and of (sending, SendFailed)
    live = sending(now=110.0)
    assert delivery.apply(live, Recover(120.0, True)).status is SENDING
    assert delivery.apply(live, Recover(140.0, True)).status is SCHEDULED
    assert delivery.apply(live, Recover(140.0, False)).status is UNKNOWN
    assert delivery.apply(live, transient(jitter=0.0)).status is FAILED
    assert delivery.apply(live, SendFailed("w1", 120.0, PERMANENT, "x", 0.0)).status is DEAD


# --- backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (2, 0.5, 1.5),
        (3, 0.25, 2.5),
        (4, 0.999, 7.996),
        (7, 1.0, 60.0),  # 64 capped at 60
        (30, 0.5, 45.0),
        (0, 0.5, 0.75),  # attempt 0 is treated as the first
        (3, -1.0, 2.0),  # jitter is clamped into [0, 1]
        (3, 7.0, 4.0),
    ],
)
def test_equal_jitter_delay(attempt: int, jitter: float, expected: float) -> None:
    policy = RetryPolicy(max_attempts=10, base_seconds=1.0, cap_seconds=60.0)
    assert policy.delay(attempt, jitter) == pytest.approx(expected)


def test_retry_after_is_a_floor_not_a_replacement() -> None:
    d = sending()  # attempt 1: backoff ceiling 1.0
    slow = delivery.apply(d, transient(now=120.0, jitter=0.0, retry_after=30.0))
    assert slow.next_attempt_at == 150.0
    fast = delivery.apply(d, transient(now=120.0, jitter=0.5, retry_after=0.1))
    assert fast.next_attempt_at == pytest.approx(120.75)


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(min_value=1, max_value=64),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    base=st.floats(min_value=0.01, max_value=10.0),
    cap=st.floats(min_value=0.01, max_value=1000.0),
    retry_after=st.none() | st.floats(min_value=0.0, max_value=1000.0),
)
def test_backoff_stays_in_the_equal_jitter_window(
    attempt: int, jitter: float, base: float, cap: float, retry_after: float | None
) -> None:
    policy = RetryPolicy(max_attempts=100, base_seconds=base, cap_seconds=cap)
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    wait = policy.delay(attempt, jitter)
    assert ceiling / 2 <= wait <= ceiling

    d = delivery.apply(
        Delivery(
            delivery_id="dl",
            isolation_key="ik",
            channel="telegram",
            identity=IDENTITY,
            conversation_id=None,
            reply=REPLY,
            echo=None,
            created_at=0.0,
            attempts=attempt - 1,
            retry=policy,
        ),
        Claim("w1", 0.0, LEASE),
    )
    assert d.attempts == attempt
    d = delivery.apply(d, SendFailed("w1", 1000.0, TRANSIENT, "429", jitter, retry_after))
    assert d.status is FAILED
    floor = retry_after or 0.0
    assert d.next_attempt_at >= 1000.0 + floor
    assert d.next_attempt_at == pytest.approx(1000.0 + max(wait, floor))
    assert d.next_attempt_at <= 1000.0 + max(ceiling, floor)


# --- properties -------------------------------------------------------------------------

OWNERS = ("w1", "w2")
SENDER_EVENTS = (EchoSent, Sent, SendFailed, Interrupted)
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
retry_afters = st.none() | st.floats(min_value=0.0, max_value=600.0)


@st.composite
def delivery_events(draw: st.DrawFn) -> list[delivery.DeliveryEvent]:
    now = 100.0
    events: list[delivery.DeliveryEvent] = []
    for _ in range(draw(st.integers(min_value=0, max_value=50))):
        now += draw(st.sampled_from([0.0, 0.5, 1.0, 10.0, LEASE, 2 * LEASE, 700.0]))
        owner = draw(st.sampled_from(OWNERS))
        # claims and echoes are drawn twice as often: most other steps need them first
        kind = draw(st.sampled_from([0, 0, 1, 1, 2, 3, 4, 5, 6]))
        event: delivery.DeliveryEvent
        if kind == 0:
            event = Claim(owner, now, LEASE)
        elif kind == 1:
            event = EchoSent(owner, now)
        elif kind == 2:
            event = Sent(owner, now)
        elif kind == 3:
            failure = draw(st.sampled_from(list(FailureKind)))
            event = SendFailed(owner, now, failure, "boom", draw(jitters), draw(retry_afters))
        elif kind == 4:
            event = Interrupted(owner, now)
        elif kind == 5:
            event = Recover(now, draw(st.booleans()))
        else:
            event = Replay(now)
        events.append(event)
    return events


@settings(max_examples=200, deadline=None)
@given(
    delivery_events(),
    st.booleans(),
    st.integers(min_value=1, max_value=4),
)
def test_random_event_sequences_keep_the_lifecycle_sound(
    events: list[delivery.DeliveryEvent], echo: bool, max_attempts: int
) -> None:
    """(b) delivered is final, dead moves only by Replay; (c) echo before reply, once;
    (d) 0 <= attempts <= max_attempts; and apply stays inside its own table."""
    d = scheduled(echo=echo, max_attempts=max_attempts)
    sends: list[str] = []  # accepted EchoSent / Sent, in order
    for event in events:
        before = d
        try:
            d = delivery.apply(d, event)
        except DeliveryTransitionRefused as refused:
            assert refused.delivery == before
            outside = (before.status, type(event)) not in DELIVERY_TRANSITIONS
            stranger = isinstance(event, SENDER_EVENTS) and before.owner != event.owner
            not_due = isinstance(event, Claim) and not before.is_due(event.now)
            out_of_order = isinstance(event, (EchoSent, Sent)) and (
                (isinstance(event, EchoSent) and before.phase != "echo")
                or (isinstance(event, Sent) and before.phase == "echo")
            )
            assert outside or stranger or not_due or out_of_order, refused
            continue

        assert d.status in DELIVERY_TRANSITIONS[(before.status, type(event))]
        # (d)
        assert 0 <= d.attempts <= d.retry.max_attempts, (before, event, d)
        # (b)
        assert before.status is not DELIVERED
        if before.status is DEAD:
            assert isinstance(event, Replay)
        if isinstance(event, EchoSent):
            sends.append("echo")
        if isinstance(event, Sent):
            sends.append("reply")
            assert d.status is DELIVERED
        # bookkeeping follows the status
        if d.status is SENDING:
            assert d.owner is not None
            assert d.lease_expires_at is not None
            assert d.attempts >= 1
        else:
            assert d.owner is None
            assert d.lease_expires_at is None
        if d.status in (SCHEDULED, FAILED):
            # so the next claim cannot exceed max_attempts
            assert d.attempts < d.retry.max_attempts
        if d.status is DEAD and before.status is not DEAD:
            assert isinstance(event, SendFailed)
            assert d.last_error == event.reason
        if isinstance(event, Recover):
            assert not d.is_abandoned(event.now)
            if not before.is_abandoned(event.now):
                assert d == before

    # (c) echo before reply, each at most once
    if echo:
        assert sends in ([], ["echo"], ["echo", "reply"])
    else:
        assert sends in ([], ["reply"])
    assert (d.status is DELIVERED) == ("reply" in sends)


@settings(max_examples=200, deadline=None)
@given(delivery_events())
def test_delivered_stays_delivered(events: list[delivery.DeliveryEvent]) -> None:
    d = delivered()
    for event in events:
        with pytest.raises(DeliveryTransitionRefused):
            delivery.apply(d, event)


OUTCOMES = ("sent", "echo_then_sent", "transient", "echo_then_transient", "permanent")


@settings(max_examples=200, deadline=None)
@given(
    st.data(),
    st.booleans(),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=5),
)
def test_retries_always_terminate(
    data: st.DataObject, echo: bool, max_attempts: int, interruption_budget: int
) -> None:
    """(a) Claims that end in a send or a failure reach delivered or dead within
    max_attempts of them; interruptions give their attempt back and are not counted."""
    d = scheduled(echo=echo, max_attempts=max_attempts)
    now = 100.0
    counted_claims = 0
    interruptions_left = interruption_budget
    for _ in range(max_attempts + interruption_budget):
        if d.status in (DELIVERED, DEAD):
            break
        now += data.draw(st.sampled_from([0.0, 0.1, 1.0, 100.0]), label="wait")
        if not d.is_due(now):
            with pytest.raises(DeliveryTransitionRefused, match="not due yet"):
                delivery.apply(d, Claim("w1", now, LEASE))
            now = d.next_attempt_at
        d = delivery.apply(d, Claim("w1", now, LEASE))
        assert 1 <= d.attempts <= max_attempts

        if interruptions_left and data.draw(st.booleans(), label="interrupt"):
            interruptions_left -= 1
            if d.phase == "echo" and data.draw(st.booleans(), label="echo first"):
                d = delivery.apply(d, EchoSent("w1", now))
            d = delivery.apply(d, Interrupted("w1", now))
            continue

        counted_claims += 1
        outcome = data.draw(st.sampled_from(OUTCOMES), label="outcome")
        if outcome.startswith("echo_then") and d.phase == "echo":
            d = delivery.apply(d, EchoSent("w1", now))
        if outcome.endswith("sent"):
            if d.phase == "echo":
                d = delivery.apply(d, EchoSent("w1", now))
            d = delivery.apply(d, Sent("w1", now))
        else:
            kind = PERMANENT if outcome == "permanent" else TRANSIENT
            failure = SendFailed(
                "w1", now, kind, outcome, data.draw(jitters), data.draw(retry_afters)
            )
            d = delivery.apply(d, failure)
            if d.status is FAILED:
                assert d.next_attempt_at >= now
    assert d.status in (DELIVERED, DEAD)
    assert counted_claims <= max_attempts
    if d.status is DEAD and d.last_error != "permanent":
        assert counted_claims == max_attempts


# --- rule 9: one conversation's deliveries in the order they were scheduled --------------


def test_deliveries_share_a_conversation_only_on_one_channel_identity_and_conversation() -> None:
    base = scheduled()
    same = attrs.evolve(base, delivery_id="dl_2", reply={"text": "another"}, created_at=200.0)
    others = [
        attrs.evolve(base, conversation_id="chat_43"),
        attrs.evolve(base, conversation_id=None),
        attrs.evolve(base, identity=ChannelIdentity("telegram", "someone-else")),
        attrs.evolve(base, channel="discord", identity=ChannelIdentity("discord", "u1")),
    ]
    assert delivery.conversation_of(same) == delivery.conversation_of(base)
    assert all(delivery.conversation_of(o) != delivery.conversation_of(base) for o in others)


def test_deliveries_are_ordered_by_when_they_were_scheduled_then_by_id() -> None:
    base = scheduled()
    later = attrs.evolve(base, delivery_id="a:00000001", created_at=101.0)
    first_of_an_instant = attrs.evolve(base, delivery_id="a:00000002", created_at=102.0)
    second_of_that_instant = attrs.evolve(base, delivery_id="a:00000003", created_at=102.0)
    # due order (a retry comes due later) does not change the order they go out in
    retried = attrs.evolve(base, delivery_id="a:00000000", created_at=100.0, next_attempt_at=500.0)
    shuffled = [second_of_that_instant, later, retried, first_of_an_instant]
    assert sorted(shuffled, key=delivery.scheduling_order) == [
        retried,
        later,
        first_of_an_instant,
        second_of_that_instant,
    ]
