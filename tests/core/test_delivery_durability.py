"""Delivery durability rules: interrupted sends, multi-part cursors, lease renewal, the
retry budget and ``Retry-After`` (issue 16, the outbox)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import (
    Claim,
    Delivery,
    DeliveryStatus,
    DeliveryTransitionRefused,
    EchoSent,
    FailureKind,
    Interrupted,
    PartSent,
    Recover,
    Renew,
    Replay,
    RetryPolicy,
    SendFailed,
    Sent,
    parse_retry_after,
)
from agenthost.sansio_core.types import ChannelIdentity

LEASE = 30.0


def new(*, echo: bool = False, retry: RetryPolicy | None = None) -> Delivery:
    return Delivery(
        delivery_id="dl_1",
        isolation_key="ik_1",
        channel="telegram",
        identity=ChannelIdentity("telegram", "42"),
        conversation_id="42",
        reply={"text": "a long answer"},
        echo={"text": "You, via Responses: hi"} if echo else None,
        created_at=100.0,
        retry=retry or RetryPolicy(),
        next_attempt_at=100.0,
        updated_at=100.0,
    )


def sending(**kwargs: object) -> Delivery:
    return delivery.apply(new(**kwargs), Claim("w1", 110.0, LEASE))  # type: ignore[arg-type]


# --- an interrupted send --------------------------------------------------------------


def test_a_send_in_flight_at_shutdown_to_a_non_idempotent_channel_is_unknown() -> None:
    d = delivery.apply(sending(), Interrupted("w1", 115.0, in_flight=True))
    assert d.status is DeliveryStatus.UNKNOWN
    assert d.attempts == 1  # the attempt was spent: the platform may have it
    assert d.owner is None and d.lease_expires_at is None
    assert not d.is_due(1e12)  # never resent blindly; an operator may replay it


def test_a_send_in_flight_to_an_idempotent_channel_is_scheduled_again() -> None:
    d = delivery.apply(sending(), Interrupted("w1", 115.0, in_flight=True, idempotent_push=True))
    assert d.status is DeliveryStatus.SCHEDULED
    assert d.attempts == 0


def test_an_interrupt_before_any_request_went_out_gives_the_attempt_back() -> None:
    d = delivery.apply(sending(), Interrupted("w1", 115.0, in_flight=False))
    assert d.status is DeliveryStatus.SCHEDULED
    assert d.attempts == 0


# --- multi-part replies -----------------------------------------------------------------


def test_parts_sent_survive_a_failure_an_interrupt_and_a_replay() -> None:
    d = delivery.apply(sending(), PartSent("w1", 111.0, 1))
    d = delivery.apply(d, PartSent("w1", 112.0, 2))
    assert d.parts_sent == 2
    d = delivery.apply(d, Interrupted("w1", 113.0, in_flight=True))
    assert d.status is DeliveryStatus.UNKNOWN
    d = delivery.apply(d, Replay(200.0))
    assert d.parts_sent == 2  # a replay resumes after what went out
    d = delivery.apply(d, Claim("w2", 200.0, LEASE))
    d = delivery.apply(d, SendFailed("w2", 201.0, FailureKind.TRANSIENT, "502", 0.0))
    assert d.parts_sent == 2
    d = delivery.apply(d, Claim("w2", 300.0, LEASE))
    assert d.parts_sent == 2
    d = delivery.apply(d, PartSent("w2", 301.0, 3))
    assert delivery.apply(d, Sent("w2", 302.0)).parts_sent == 3


def test_part_sent_is_refused_before_the_echo_backwards_and_from_another_worker() -> None:
    echoing = sending(echo=True)
    with pytest.raises(DeliveryTransitionRefused, match="echo has not been sent"):
        delivery.apply(echoing, PartSent("w1", 111.0, 1))
    d = delivery.apply(delivery.apply(echoing, EchoSent("w1", 111.0)), PartSent("w1", 112.0, 2))
    with pytest.raises(DeliveryTransitionRefused, match="already recorded"):
        delivery.apply(d, PartSent("w1", 113.0, 1))
    with pytest.raises(DeliveryTransitionRefused, match="another worker"):
        delivery.apply(d, PartSent("w2", 113.0, 3))


# --- lease renewal -------------------------------------------------------------------------


def test_a_renewed_lease_keeps_a_slow_send_from_being_taken_for_a_dead_one() -> None:
    d = sending()  # lease until 140
    renewed = delivery.apply(d, Renew("w1", 135.0, LEASE))
    assert renewed.lease_expires_at == 165.0
    assert delivery.apply(renewed, Recover(150.0, idempotent_push=False)) == renewed
    # and its own Sent is still accepted past the first lease
    assert delivery.apply(renewed, Sent("w1", 150.0)).status is DeliveryStatus.DELIVERED


def test_renew_is_refused_to_another_worker_and_after_recovery() -> None:
    d = sending()
    with pytest.raises(DeliveryTransitionRefused, match="another worker"):
        delivery.apply(d, Renew("w2", 120.0, LEASE))
    lost = delivery.apply(d, Recover(141.0, idempotent_push=False))
    with pytest.raises(DeliveryTransitionRefused, match="no such transition"):
        delivery.apply(lost, Renew("w1", 142.0, LEASE))


# --- the retry budget ------------------------------------------------------------------------


def fail_until_dead(
    d: Delivery, jitters: list[float], retry_afters: list[float | None]
) -> tuple[Delivery, float, float]:
    """Claim and fail transiently whenever due; answer (dead delivery, first failure, end)."""
    now = d.next_attempt_at
    first: float | None = None
    for n in range(10_000):
        d = delivery.apply(d, Claim("w1", now, LEASE))
        event = SendFailed(
            "w1",
            now + 1.0,
            FailureKind.TRANSIENT,
            "connect error",
            jitters[n % len(jitters)],
            retry_afters[n % len(retry_afters)],
        )
        first = now + 1.0 if first is None else first
        d = delivery.apply(d, event)
        if d.status is DeliveryStatus.DEAD:
            return d, first, now + 1.0
        now = d.next_attempt_at
    raise AssertionError("retries never ended")


@settings(max_examples=200, deadline=None)
@given(
    jitters=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20),
    retry_afters=st.lists(st.none() | st.floats(0.0, 300.0), min_size=1, max_size=20),
)
def test_the_default_budget_rides_out_about_an_hour(
    jitters: list[float], retry_afters: list[float | None]
) -> None:
    policy = RetryPolicy()
    d, first, end = fail_until_dead(new(retry=policy), jitters, retry_afters)
    # never given up sooner than the budget less one step, nor later than the budget (and
    # the last send's own second)
    budget = policy.budget_seconds
    assert budget - policy.cap_seconds <= end - first <= budget + 1.0 + 1e-6
    assert end - first >= 55 * 60
    assert d.attempts <= policy.max_attempts


@settings(max_examples=100, deadline=None)
@given(
    budget=st.floats(1.0, 10_000.0),
    base=st.floats(0.01, 10.0),
    cap=st.floats(0.01, 600.0),
    jitters=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10),
)
def test_any_policy_terminates_within_its_budget(
    budget: float, base: float, cap: float, jitters: list[float]
) -> None:
    policy = RetryPolicy(
        max_attempts=1000, base_seconds=base, cap_seconds=cap, budget_seconds=budget
    )
    d, first, end = fail_until_dead(new(retry=policy), jitters, [None])
    assert end - first <= budget + 1.0 + 1e-6  # the last send takes a second
    assert d.attempts <= policy.max_attempts


def test_a_replay_starts_a_new_budget() -> None:
    policy = RetryPolicy(budget_seconds=60.0, base_seconds=10.0, cap_seconds=10.0)
    d, _, end = fail_until_dead(new(retry=policy), [0.0], [None])
    again = delivery.apply(d, Replay(end + 1000.0))
    assert again.failing_since is None
    again = delivery.apply(again, Claim("w1", end + 1000.0, LEASE))
    again = delivery.apply(again, SendFailed("w1", end + 1001.0, FailureKind.TRANSIENT, "502", 0.0))
    assert again.status is DeliveryStatus.FAILED


@pytest.mark.parametrize("field", ["max_attempts", "base_seconds", "budget_seconds"])
def test_a_policy_that_cannot_work_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: 0})  # type: ignore[arg-type]


# --- Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [math.inf, math.nan, 3601.0, 1e12])
def test_a_retry_after_past_the_cap_is_a_dead_letter(retry_after: float) -> None:
    d = delivery.apply(
        sending(), SendFailed("w1", 120.0, FailureKind.TRANSIENT, "429", 0.5, retry_after)
    )
    assert d.status is DeliveryStatus.DEAD
    assert d.last_error is not None and "retry-after" in d.last_error


def test_a_retry_after_within_the_cap_is_waited_for() -> None:
    d = delivery.apply(
        sending(), SendFailed("w1", 120.0, FailureKind.TRANSIENT, "429", 0.5, 1800.0)
    )
    assert d.status is DeliveryStatus.FAILED
    assert d.next_attempt_at == 1920.0


def test_the_cap_is_the_policy_s() -> None:
    strict = RetryPolicy(max_retry_after_seconds=10.0)
    d = delivery.apply(
        sending(retry=strict), SendFailed("w1", 120.0, FailureKind.TRANSIENT, "429", 0.5, 11.0)
    )
    assert d.status is DeliveryStatus.DEAD


NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 08:28:00 GMT", 3600.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # the obsolete RFC 850 form
        ("Wed Oct 21 07:30:00 2015", None),  # asctime has no zone: not trusted
        ("Tue, 20 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now
        ("soon", None),
        ("-5", None),
        ("1.5", 1.5),  # not the RFC's form, but some servers send it
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    parsed = parse_retry_after(header, NOW)
    if seconds is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(seconds)
