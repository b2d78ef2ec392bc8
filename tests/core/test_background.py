"""The background-run lifecycle: each transition, refusals, recovery, and random sequences."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import background
from agenthost.sansio_core.background import (
    RUN_TRANSITIONS,
    Cancel,
    Complete,
    Fail,
    Heartbeat,
    Recover,
    RunRecord,
    RunTransitionRefused,
    Start,
    Suspend,
)
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    HostMessage,
    ResponseTarget,
    RunStatus,
)

LEASE = 30.0
TTL = 3600.0

REQUEST = ChannelRequest(
    channel="telegram",
    identity=ChannelIdentity("telegram", "42"),
    input=(HostMessage.user("summarise the report"),),
    response_target=ResponseTarget.active(),
    background=True,
)


def queued(*, max_attempts: int = 3, now: float = 100.0) -> RunRecord:
    return background.new_run(
        token="tok_1",
        request=REQUEST,
        isolation_key="ik_1",
        session_id="s_1",
        session_key=None,
        now=now,
        max_attempts=max_attempts,
    )


def running(*, owner: str = "w1", now: float = 110.0, max_attempts: int = 3) -> RunRecord:
    return background.apply(queued(max_attempts=max_attempts), Start(owner, now, LEASE))


# --- each transition ------------------------------------------------------------------


def test_new_run_is_recorded_queued() -> None:
    run = queued()
    assert run.status is RunStatus.QUEUED
    assert run.attempts == 0
    assert run.owner is None
    assert run.lease_expires_at is None
    assert run.created_at == run.updated_at == 100.0
    token = run.to_token()
    assert token.token == "tok_1"
    assert token.status is RunStatus.QUEUED
    assert token.isolation_key == "ik_1"
    assert token.created_at == 100.0
    assert token.completed_at is None
    assert token.response_target == ResponseTarget.active()


def test_start_takes_a_queued_run() -> None:
    run = background.apply(queued(), Start("w1", 110.0, LEASE))
    assert run.status is RunStatus.RUNNING
    assert run.owner == "w1"
    assert run.attempts == 1
    assert run.started_at == 110.0
    assert run.updated_at == 110.0
    assert run.lease_expires_at == 140.0


def test_heartbeat_by_the_owner_extends_the_lease() -> None:
    run = background.apply(running(), Heartbeat("w1", 130.0, LEASE))
    assert run.status is RunStatus.RUNNING
    assert run.lease_expires_at == 160.0
    assert run.updated_at == 130.0
    assert run.attempts == 1


def test_complete_by_the_owner_keeps_the_result_until_ttl() -> None:
    run = background.apply(running(), Complete("w1", 150.0, {"text": "done"}, TTL))
    assert run.status is RunStatus.COMPLETED
    assert run.result == {"text": "done"}
    assert run.error is None
    assert run.completed_at == 150.0
    assert run.expires_at == 150.0 + TTL
    assert run.owner is None
    assert run.lease_expires_at is None
    token = run.to_token()
    assert token.status is RunStatus.COMPLETED
    assert token.result == {"text": "done"}
    assert token.completed_at == 150.0


def test_fail_by_the_owner_records_the_error() -> None:
    run = background.apply(running(), Fail("w1", 150.0, "target raised ValueError", TTL))
    assert run.status is RunStatus.FAILED
    assert run.error == "target raised ValueError"
    assert run.result is None
    assert run.expires_at == 150.0 + TTL
    assert run.owner is None


def test_suspend_requeues_without_spending_an_attempt() -> None:
    run = background.apply(running(), Suspend("w1", 120.0))
    assert run.status is RunStatus.QUEUED
    assert run.attempts == 0
    assert run.owner is None
    assert run.lease_expires_at is None
    again = background.apply(run, Start("w2", 200.0, LEASE))
    assert again.attempts == 1
    assert again.owner == "w2"


@pytest.mark.parametrize("make", [queued, running])
def test_cancel_an_unfinished_run(make: Callable[[], RunRecord]) -> None:
    run = make()
    cancelled = background.apply(run, Cancel(160.0, TTL))
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.error == "cancelled by request"
    assert cancelled.completed_at == 160.0
    assert cancelled.expires_at == 160.0 + TTL
    assert cancelled.owner is None


def test_the_owner_of_a_cancelled_run_learns_it_at_its_next_heartbeat() -> None:
    cancelled = background.apply(running(), Cancel(120.0, TTL))
    with pytest.raises(RunTransitionRefused):
        background.apply(cancelled, Heartbeat("w1", 125.0, LEASE))


@pytest.mark.parametrize(
    "finish",
    [
        Complete("w1", 150.0, {"text": "done"}, TTL),
        Fail("w1", 150.0, "boom", TTL),
        Cancel(150.0, TTL),
    ],
)
def test_cancel_is_a_noop_on_a_finished_run(finish: background.RunEvent) -> None:
    finished = background.apply(running(), finish)
    assert finished.status.is_final
    again = background.apply(finished, Cancel(900.0, 1.0))
    assert again == finished
    assert again.expires_at == 150.0 + TTL


# --- refusals ---------------------------------------------------------------------------


def test_complete_by_a_stale_owner_is_refused() -> None:
    # w1 died; the sweep requeued the run and w2 took it. w1's late answer must not land.
    first = running(owner="w1", now=110.0)
    requeued = background.apply(first, Recover(200.0, TTL))
    second = background.apply(requeued, Start("w2", 210.0, LEASE))
    with pytest.raises(RunTransitionRefused) as refused:
        background.apply(second, Complete("w1", 215.0, {"text": "late"}, TTL))
    assert refused.value.record == second
    assert "another worker" in refused.value.reason


@pytest.mark.parametrize(
    "event",
    [
        Heartbeat("w2", 120.0, LEASE),
        Complete("w2", 120.0, {}, TTL),
        Fail("w2", 120.0, "x", TTL),
        Suspend("w2", 120.0),
    ],
)
def test_only_the_owner_may_act_on_a_running_run(event: background.RunEvent) -> None:
    with pytest.raises(RunTransitionRefused, match="another worker"):
        background.apply(running(owner="w1"), event)


def test_start_on_a_running_run_is_refused() -> None:
    with pytest.raises(RunTransitionRefused, match="no such transition") as refused:
        background.apply(running(), Start("w2", 120.0, LEASE))
    assert refused.value.reason == "no such transition"


@pytest.mark.parametrize(
    "event",
    [
        Heartbeat("w1", 120.0, LEASE),
        Complete("w1", 120.0, {}, TTL),
        Fail("w1", 120.0, "x", TTL),
        Suspend("w1", 120.0),
    ],
)
def test_owner_events_on_a_queued_run_are_refused(event: background.RunEvent) -> None:
    with pytest.raises(RunTransitionRefused, match="refused on queued run"):
        background.apply(queued(), event)


@pytest.mark.parametrize(
    "event",
    [
        Start("w1", 200.0, LEASE),
        Heartbeat("w1", 200.0, LEASE),
        Complete("w1", 200.0, {}, TTL),
        Fail("w1", 200.0, "x", TTL),
        Recover(200.0, TTL),
    ],
)
def test_a_finished_run_refuses_everything_but_cancel(event: background.RunEvent) -> None:
    done = background.apply(running(), Complete("w1", 150.0, {"text": "ok"}, TTL))
    with pytest.raises(RunTransitionRefused):
        background.apply(done, event)


# --- recovery ---------------------------------------------------------------------------


def test_recover_leaves_a_live_run_alone() -> None:
    run = running(now=110.0)  # lease until 140
    assert background.apply(run, Recover(139.0, TTL)) == run


def test_recover_leaves_a_queued_run_alone() -> None:
    run = queued()
    assert background.apply(run, Recover(10_000.0, TTL)) == run


def test_recover_requeues_an_abandoned_run_with_attempts_left() -> None:
    run = running(now=110.0)  # lease until 140
    recovered = background.apply(run, Recover(140.0, TTL))
    assert recovered.status is RunStatus.QUEUED
    assert recovered.owner is None
    assert recovered.lease_expires_at is None
    assert recovered.attempts == 1  # spent: the host died mid-run
    assert recovered.updated_at == 140.0
    assert recovered.completed_at is None


def test_recover_fails_an_abandoned_run_out_of_attempts() -> None:
    run = queued(max_attempts=2)
    now = 100.0
    for attempt in (1, 2):
        run = background.apply(run, Start(f"w{attempt}", now, LEASE))
        assert run.attempts == attempt
        now += LEASE + 1
        run = background.apply(run, Recover(now, TTL))
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert "host stopped" in run.error
    assert "2 time(s)" in run.error
    assert run.completed_at == now
    assert run.expires_at == now + TTL
    assert run.owner is None


def test_is_abandoned_and_is_expired() -> None:
    run = running(now=110.0)
    assert not run.is_abandoned(139.9)
    assert run.is_abandoned(140.0)
    assert not queued().is_abandoned(1e9)
    done = background.apply(run, Complete("w1", 120.0, {}, 60.0))
    assert not background.is_expired(done, 179.9)
    assert background.is_expired(done, 180.0)
    assert not background.is_expired(run, 1e9)


def test_every_table_row_is_reachable() -> None:
    seen: set[tuple[RunStatus, type]] = set()

    def step(record: RunRecord, event: background.RunEvent) -> RunRecord:
        seen.add((record.status, type(event)))
        return background.apply(record, event)

    run = step(queued(), Recover(100.0, TTL))
    run = step(run, Start("w1", 110.0, LEASE))
    run = step(run, Heartbeat("w1", 120.0, LEASE))
    run = step(run, Recover(121.0, TTL))
    run = step(run, Suspend("w1", 122.0))
    step(run, Cancel(123.0, TTL))
    run = step(run, Start("w1", 124.0, LEASE))
    step(run, Cancel(125.0, TTL))
    cancelled = background.apply(run, Cancel(125.0, TTL))
    step(cancelled, Cancel(126.0, TTL))
    step(step(run, Complete("w1", 126.0, {}, TTL)), Cancel(127.0, TTL))
    step(step(run, Fail("w1", 126.0, "x", TTL)), Cancel(127.0, TTL))
    assert seen == set(RUN_TRANSITIONS)


# --- properties -------------------------------------------------------------------------

OWNERS = ("w1", "w2")
OWNER_EVENTS = (Heartbeat, Complete, Fail, Suspend)


@st.composite
def run_events(draw: st.DrawFn) -> list[background.RunEvent]:
    now = 100.0
    events: list[background.RunEvent] = []
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        now += draw(st.sampled_from([0.0, 1.0, 10.0, LEASE, 2 * LEASE]))
        owner = draw(st.sampled_from(OWNERS))
        kind = draw(st.integers(min_value=0, max_value=6))
        event: background.RunEvent = [
            Start(owner, now, LEASE),
            Heartbeat(owner, now, LEASE),
            Complete(owner, now, {"n": len(events)}, TTL),
            Fail(owner, now, "boom", TTL),
            Suspend(owner, now),
            Cancel(now, TTL),
            Recover(now, TTL),
        ][kind]
        events.append(event)
    return events


@settings(max_examples=200, deadline=None)
@given(run_events(), st.integers(min_value=1, max_value=4))
def test_random_event_sequences_keep_the_lifecycle_sound(
    events: list[background.RunEvent], max_attempts: int
) -> None:
    run = queued(max_attempts=max_attempts)
    for event in events:
        before = run
        try:
            run = background.apply(run, event)
        except RunTransitionRefused as refused:
            # refused only outside the table, or by someone who is not the owner
            outside = (before.status, type(event)) not in RUN_TRANSITIONS
            stranger = isinstance(event, OWNER_EVENTS) and before.owner != event.owner
            assert outside or stranger, refused
            assert refused.record == before
            continue

        assert run.status in RunStatus
        assert run.status in RUN_TRANSITIONS[(before.status, type(event))]
        if before.status.is_final:
            assert isinstance(event, Cancel)
            assert run == before
            continue
        assert 0 <= run.attempts <= run.max_attempts
        if run.status is RunStatus.RUNNING:
            assert run.attempts >= 1
            assert run.owner is not None
            assert run.lease_expires_at is not None
        if run.status is RunStatus.QUEUED:
            # so the next Start cannot exceed max_attempts
            assert run.attempts < run.max_attempts
            assert run.owner is None
            assert run.lease_expires_at is None
        if run.status.is_final:  # it just finished
            assert run.owner is None
            assert run.completed_at == event.now
            assert run.expires_at is not None
            assert run.expires_at >= event.now
        if run.status is RunStatus.COMPLETED:
            assert isinstance(event, Complete)
            assert run.result == event.result
        if run.status is RunStatus.FAILED and isinstance(event, Recover):
            assert run.error is not None
            assert "host stopped" in run.error
        if isinstance(event, Recover):
            assert not run.is_abandoned(event.now)
            if before.is_abandoned(event.now):
                assert run.status is not RunStatus.RUNNING
            else:
                assert run == before
