"""The per-session run lease: each transition, then properties over random event sequences."""

from __future__ import annotations

import random
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import leases
from agenthost.sansio_core.leases import (
    Arrive,
    Granted,
    LeaseLost,
    LeaseState,
    Poll,
    Rejected,
    Release,
    Released,
    Renew,
    Renewed,
    RunLeaseState,
    Waiting,
    Withdraw,
    Withdrawn,
)
from agenthost.sansio_core.types import MultitaskStrategy

ENQUEUE = MultitaskStrategy.ENQUEUE
REJECT = MultitaskStrategy.REJECT
INTERRUPT = MultitaskStrategy.INTERRUPT
TTL = 10.0


def held_by(run_id: str, *, now: float = 0.0, ttl: float = TTL) -> LeaseState:
    state, decision = leases.apply(leases.initial_state("s1"), Arrive(run_id, ENQUEUE, now, ttl))
    assert decision == Granted(fence=1)
    return state


def waiter_ids(state: LeaseState) -> list[str]:
    return [w.run_id for w in state.waiters]


# --- each transition ------------------------------------------------------------------


def test_arrive_on_a_free_lease_grants_it() -> None:
    state, decision = leases.apply(leases.initial_state("s1"), Arrive("a", ENQUEUE, 5.0, TTL))
    assert decision == Granted(fence=1)
    assert state.holder == "a"
    assert state.expires_at == 15.0
    assert state.waiters == ()
    assert state.state_of("a", 5.0) is RunLeaseState.HOLDING


def test_enqueue_waits_in_arrival_order() -> None:
    state = held_by("a")
    state, first = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, second = leases.apply(state, Arrive("c", ENQUEUE, 2.0, TTL))
    assert first == Waiting(position=0)
    assert second == Waiting(position=1)
    assert waiter_ids(state) == ["b", "c"]
    assert state.holder == "a"

    # c is not at the head: it keeps waiting even once the lease is free
    state, decision = leases.apply(state, Release("a", 3.0))
    assert decision == Released()
    state, decision = leases.apply(state, Poll("c", 3.5, TTL))
    assert decision == Waiting(position=1)
    state, decision = leases.apply(state, Poll("b", 4.0, TTL))
    assert decision == Granted(fence=2)
    assert state.holder == "b"
    assert waiter_ids(state) == ["c"]
    state, _ = leases.apply(state, Release("b", 5.0))
    state, decision = leases.apply(state, Poll("c", 6.0, TTL))
    assert decision == Granted(fence=3)
    assert state.waiters == ()


def test_reject_answers_rejected_and_queues_nothing() -> None:
    state = held_by("a")
    new_state, decision = leases.apply(state, Arrive("b", REJECT, 1.0, TTL))
    assert decision == Rejected()
    assert new_state == state
    assert new_state.state_of("b", 1.0) is RunLeaseState.ABSENT


def test_reject_is_rejected_while_others_queue_even_if_holder_released() -> None:
    state = held_by("a")
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, _ = leases.apply(state, Release("a", 2.0))
    # b has not polled yet: the lease is not free for newcomers
    state, decision = leases.apply(state, Arrive("c", REJECT, 2.5, TTL))
    assert decision == Rejected()
    assert waiter_ids(state) == ["b"]


def test_reject_on_a_free_lease_grants_it() -> None:
    _, decision = leases.apply(leases.initial_state("s1"), Arrive("a", REJECT, 0.0, TTL))
    assert decision == Granted(fence=1)


def test_interrupt_asks_the_holder_to_stop_and_waits_at_the_front() -> None:
    state = held_by("a")
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, decision = leases.apply(state, Arrive("c", INTERRUPT, 2.0, TTL))
    assert decision == Waiting(position=0, interrupting="a")
    assert state.interrupt_requested is True
    assert waiter_ids(state) == ["c", "b"]

    state, decision = leases.apply(state, Renew("a", 3.0, TTL))
    assert decision == Renewed(interrupt_requested=True)
    assert state.expires_at == 13.0

    state, _ = leases.apply(state, Release("a", 4.0))
    assert state.interrupt_requested is False
    state, decision = leases.apply(state, Poll("c", 4.5, TTL))
    assert decision == Granted(fence=2)
    assert state.interrupt_requested is False
    state, decision = leases.apply(state, Renew("c", 5.0, TTL))
    assert decision == Renewed(interrupt_requested=False)


def test_renew_without_interrupt_reports_none() -> None:
    state = held_by("a")
    state, decision = leases.apply(state, Renew("a", 4.0, TTL))
    assert decision == Renewed(interrupt_requested=False)
    assert state.expires_at == 14.0


def test_interrupt_with_no_live_holder_interrupts_nobody() -> None:
    state = held_by("a")
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, _ = leases.apply(state, Release("a", 2.0))
    state, decision = leases.apply(state, Arrive("c", INTERRUPT, 3.0, TTL))
    assert decision == Waiting(position=0, interrupting=None)
    assert state.interrupt_requested is False
    assert waiter_ids(state) == ["c", "b"]


def test_expired_holder_is_taken_over_by_the_head_waiter() -> None:
    state = held_by("a", now=0.0, ttl=TTL)
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, 100.0))
    state, decision = leases.apply(state, Poll("b", 9.0, 100.0))
    assert decision == Waiting(position=0)  # a is still alive at 9 < 10
    state, decision = leases.apply(state, Poll("b", 10.0, 100.0))
    assert decision == Granted(fence=2)
    assert state.holder == "b"
    # the old holder learns it lost the lease, and cannot release b's
    state, decision = leases.apply(state, Renew("a", 11.0, TTL))
    assert decision == LeaseLost()
    state, decision = leases.apply(state, Release("a", 11.0))
    assert decision == LeaseLost()
    assert state.holder == "b"


def test_expired_holder_nobody_replaced_may_renew() -> None:
    state = held_by("a", ttl=TTL)
    state, decision = leases.apply(state, Renew("a", 50.0, TTL))
    assert decision == Renewed(interrupt_requested=False)
    assert state.holder == "a"
    assert state.expires_at == 60.0


def test_newcomer_takes_an_expired_lease_with_no_waiters() -> None:
    state = held_by("a", ttl=TTL)
    state, decision = leases.apply(state, Arrive("b", ENQUEUE, 10.0, TTL))
    assert decision == Granted(fence=2)
    assert state.holder == "b"


@pytest.mark.parametrize("event", [Renew("b", 1.0, TTL), Release("b", 1.0)])
def test_non_holder_renew_or_release_is_lease_lost(event: Renew | Release) -> None:
    state = held_by("a")
    new_state, decision = leases.apply(state, event)
    assert decision == LeaseLost()
    assert new_state == state


@pytest.mark.parametrize("event", [Renew("b", 2.0, TTL), Release("b", 2.0)])
def test_waiter_renew_or_release_is_lease_lost_and_keeps_its_place(
    event: Renew | Release,
) -> None:
    state = held_by("a")
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, decision = leases.apply(state, event)
    assert decision == LeaseLost()
    assert waiter_ids(state) == ["b"]
    assert state.holder == "a"


def test_release_frees_the_lease() -> None:
    state = held_by("a")
    state, decision = leases.apply(state, Release("a", 1.0))
    assert decision == Released()
    assert state.holder is None
    assert state.state_of("a", 1.0) is RunLeaseState.ABSENT
    state, decision = leases.apply(state, Arrive("b", ENQUEUE, 2.0, TTL))
    assert decision == Granted(fence=2)


def test_waiter_that_stops_polling_is_dropped_then_rejoins_at_the_back() -> None:
    state = held_by("a", ttl=1000.0)
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))  # b alive until 11
    state, _ = leases.apply(state, Arrive("c", ENQUEUE, 2.0, TTL))
    state, decision = leases.apply(state, Poll("c", 10.0, TTL))
    assert decision == Waiting(position=1)
    # b has gone quiet past its ttl: the next step drops it, c moves up
    state, decision = leases.apply(state, Poll("c", 12.0, TTL))
    assert decision == Waiting(position=0)
    assert waiter_ids(state) == ["c"]
    assert state.state_of("b", 12.0) is RunLeaseState.ABSENT
    # b comes back: late, but not lost
    state, decision = leases.apply(state, Poll("b", 13.0, TTL))
    assert decision == Waiting(position=1)
    assert waiter_ids(state) == ["c", "b"]
    assert state.waiters[1].expires_at == 23.0


def test_dropped_waiter_polling_a_free_empty_lease_is_granted() -> None:
    state = held_by("a")
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, _ = leases.apply(state, Release("a", 2.0))
    state, _ = leases.apply(state, Arrive("c", ENQUEUE, 50.0, TTL))  # drops b, grants c
    assert state.holder == "c"
    state, _ = leases.apply(state, Release("c", 51.0))
    state, decision = leases.apply(state, Poll("b", 52.0, TTL))
    assert decision == Granted(fence=3)


def test_poll_refreshes_the_waiter() -> None:
    state = held_by("a", ttl=1000.0)
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, _ = leases.apply(state, Poll("b", 8.0, TTL))
    assert state.waiters[0].expires_at == 18.0


def test_duplicate_arrive_does_not_queue_twice() -> None:
    state = held_by("a")
    state, first = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, again = leases.apply(state, Arrive("b", ENQUEUE, 2.0, TTL))
    assert first == again == Waiting(position=0)
    assert waiter_ids(state) == ["b"]
    # an interrupting duplicate does not jump the queue nor queue twice either
    state, _ = leases.apply(state, Arrive("c", ENQUEUE, 3.0, TTL))
    state, decision = leases.apply(state, Arrive("c", INTERRUPT, 4.0, TTL))
    assert decision == Waiting(position=1)
    assert waiter_ids(state) == ["b", "c"]


def test_duplicate_arrive_by_the_holder_is_granted_again_with_the_same_fence() -> None:
    state = held_by("a")
    state, decision = leases.apply(state, Arrive("a", ENQUEUE, 1.0, TTL))
    assert decision == Granted(fence=1)
    assert state.holder == "a"
    assert state.grants == 1


def test_duplicate_arrive_by_an_expired_holder_renews_its_lease() -> None:
    # Told "granted" again, the holder believes it holds for another ttl; so must the lease,
    # or a waiter would take over while the holder still runs.
    state = held_by("a", ttl=TTL)
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, 100.0))
    state, decision = leases.apply(state, Arrive("a", ENQUEUE, 12.0, TTL))
    assert decision == Granted(fence=1)
    state, decision = leases.apply(state, Poll("b", 13.0, 100.0))
    assert decision == Waiting(position=0)
    assert state.holder == "a"


def test_poll_by_the_holder_answers_granted() -> None:
    # A retried poll whose first answer (the grant) was lost on the way back.
    state = held_by("a")
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, _ = leases.apply(state, Release("a", 2.0))
    state, decision = leases.apply(state, Poll("b", 3.0, TTL))
    assert decision == Granted(fence=2)
    state, decision = leases.apply(state, Poll("b", 4.0, TTL))
    assert decision == Granted(fence=2)
    assert state.holder == "b"
    assert state.waiters == ()
    assert state.expires_at == 14.0


def test_withdraw_leaves_the_queue() -> None:
    state = held_by("a")
    state, _ = leases.apply(state, Arrive("b", ENQUEUE, 1.0, TTL))
    state, _ = leases.apply(state, Arrive("c", ENQUEUE, 1.0, TTL))
    state, decision = leases.apply(state, Withdraw("b", 2.0))
    assert decision == Withdrawn()
    assert waiter_ids(state) == ["c"]
    state, decision = leases.apply(state, Withdraw("zz", 2.0))
    assert decision == Withdrawn()
    assert waiter_ids(state) == ["c"]


def test_withdraw_by_the_holder_is_lease_lost_and_keeps_the_lease() -> None:
    state = held_by("a")
    new_state, decision = leases.apply(state, Withdraw("a", 1.0))
    assert decision == LeaseLost()
    assert new_state.holder == "a"


def test_every_table_row_is_reachable() -> None:
    """Each row of RUN_LEASE_TRANSITIONS is exercised by some step (no dead rows)."""
    seen: set[tuple[RunLeaseState, type, RunLeaseState]] = set()

    def step(state: LeaseState, event: leases.LeaseEvent) -> LeaseState:
        before = state.state_of(event.run_id, event.now)
        new_state, _ = leases.apply(state, event)
        seen.add((before, type(event), new_state.state_of(event.run_id, event.now)))
        return new_state

    s = leases.initial_state("s1")
    s = step(s, Arrive("a", ENQUEUE, 0.0, TTL))  # absent -> holding
    s = step(s, Arrive("a", ENQUEUE, 0.5, TTL))  # holding -> holding
    s = step(s, Arrive("b", ENQUEUE, 1.0, TTL))  # absent -> waiting
    s = step(s, Arrive("b", ENQUEUE, 1.5, TTL))  # waiting -> waiting
    s = step(s, Arrive("x", REJECT, 1.5, TTL))  # absent -> absent
    s = step(s, Poll("b", 2.0, TTL))  # waiting -> waiting
    s = step(s, Renew("b", 2.0, TTL))  # waiting, renew
    s = step(s, Release("b", 2.0))  # waiting, release
    s = step(s, Renew("x", 2.0, TTL))  # absent, renew
    s = step(s, Release("x", 2.0))  # absent, release
    s = step(s, Withdraw("x", 2.0))  # absent, withdraw
    s = step(s, Withdraw("a", 2.0))  # holding, withdraw
    s = step(s, Renew("a", 3.0, TTL))  # holding, renew
    s = step(s, Release("a", 3.0))  # holding -> absent
    s = step(s, Arrive("b", ENQUEUE, 3.5, TTL))  # waiting -> holding
    s = step(s, Poll("b", 3.6, TTL))  # holding, poll
    s = step(s, Arrive("c", ENQUEUE, 4.0, TTL))
    s = step(s, Withdraw("c", 4.0))  # waiting -> absent
    s = step(s, Poll("c", 4.5, TTL))  # absent -> waiting
    s = step(s, Release("b", 5.0))
    s = step(s, Poll("c", 5.5, TTL))  # waiting -> holding
    s = step(s, Release("c", 6.0))
    s = step(s, Poll("d", 7.0, TTL))  # absent -> holding
    assert s.holder == "d"
    assert seen == set(leases.RUN_LEASE_TRANSITIONS)


# --- properties -------------------------------------------------------------------------

RUNS = ("r0", "r1", "r2", "r3")

event_kinds = st.sampled_from(["arrive", "poll", "renew", "release", "withdraw"])
strategies = st.sampled_from(list(MultitaskStrategy))
ttls = st.sampled_from([1.0, 2.5, 5.0, 10.0])
time_steps = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=8.0))


@st.composite
def lease_events(draw: st.DrawFn, max_size: int = 60) -> list[leases.LeaseEvent]:
    now = 0.0
    events: list[leases.LeaseEvent] = []
    for _ in range(draw(st.integers(min_value=0, max_value=max_size))):
        now += draw(time_steps)
        run_id = draw(st.sampled_from(RUNS))
        kind = draw(event_kinds)
        event: leases.LeaseEvent
        if kind == "arrive":
            event = Arrive(run_id, draw(strategies), now, draw(ttls))
        elif kind == "poll":
            event = Poll(run_id, now, draw(ttls))
        elif kind == "renew":
            event = Renew(run_id, now, draw(ttls))
        elif kind == "release":
            event = Release(run_id, now)
        else:
            event = Withdraw(run_id, now)
        events.append(event)
    return events


@attrs.define
class Believer:
    """What one run believes of the lease, from the answers it was given."""

    holds_until: float | None = None  # None: it does not believe it holds

    def believes_at(self, now: float) -> bool:
        return self.holds_until is not None and self.holds_until > now


@settings(max_examples=200, deadline=None)
@given(lease_events())
def test_never_two_live_holders(events: list[leases.LeaseEvent]) -> None:
    """A run believes it holds from Granted/Renewed for ttl, until told otherwise.

    Beliefs only start or extend at the event's ``now``; so if, after every step, at most
    one run believes it holds beyond ``now``, no two believed hold intervals overlap.
    """
    state = leases.initial_state("s1")
    runs = {run_id: Believer() for run_id in RUNS}
    last_fence = 0
    for event in events:
        state, decision = leases.apply(state, event)
        run = runs[event.run_id]
        if isinstance(decision, Granted):
            assert not isinstance(event, (Renew, Release, Withdraw))
            run.holds_until = event.now + event.ttl
            assert decision.fence >= last_fence
            last_fence = decision.fence
            assert state.holder == event.run_id
        elif isinstance(decision, Renewed):
            assert isinstance(event, Renew)
            run.holds_until = event.now + event.ttl
        elif isinstance(decision, (Released, LeaseLost)):
            run.holds_until = None
        believers = [r for r, b in runs.items() if b.believes_at(event.now)]
        assert len(believers) <= 1, (believers, state)
        if believers:
            # the store agrees with the one run that believes it holds
            assert state.holder == believers[0]
            assert state.expires_at >= runs[believers[0]].holds_until  # type: ignore[operator]
        assert state.holder not in waiter_ids(state)
        assert len(set(waiter_ids(state))) == len(state.waiters)


@settings(max_examples=200, deadline=None)
@given(lease_events())
def test_fence_increases_with_each_new_holder(events: list[leases.LeaseEvent]) -> None:
    state = leases.initial_state("s1")
    holders: list[tuple[str, int]] = []
    for event in events:
        before = state
        state, _ = leases.apply(state, event)
        if state.holder is not None and (state.holder, state.grants) != (
            before.holder,
            before.grants,
        ):
            holders.append((state.holder, state.grants))
    fences = [fence for _, fence in holders]
    assert fences == list(range(1, len(fences) + 1))


@settings(max_examples=200, deadline=None)
@given(lease_events(max_size=80))
def test_apply_never_breaks_its_own_table(events: list[leases.LeaseEvent]) -> None:
    state = leases.initial_state("s1")
    for event in events:
        before = state.state_of(event.run_id, event.now)
        try:
            state, decision = leases.apply(state, event)
        except leases.LeaseTransitionError as error:  # pragma: no cover - the failure
            pytest.fail(f"{event!r} on {state!r}: {error}")
        after = state.state_of(event.run_id, event.now)
        assert isinstance(decision, leases.RUN_LEASE_TRANSITIONS[(before, type(event), after)])


def states_reached(events: list[leases.LeaseEvent]) -> Iterator[tuple[leases.LeaseState, float]]:
    """The initial lease and the lease after each of ``events``, each with its time."""
    state = leases.initial_state("s1")
    yield state, 0.0
    for event in events:
        state, _ = leases.apply(state, event)
        yield state, event.now


@settings(max_examples=200, deadline=None)
@given(lease_events(), st.sampled_from(RUNS), strategies, time_steps, ttls)
def test_arrive_answers_as_apply_does(
    events: list[leases.LeaseEvent],
    run_id: str,
    strategy: MultitaskStrategy,
    later: float,
    ttl: float,
) -> None:
    """``arrive``'s shortcut for a free lease changes nothing: on every state a lease can
    reach (and on none stored yet), it answers what ``apply`` answers for the arrival."""
    for state, now in states_reached(events):
        arrival = Arrive(run_id, strategy, now + later, ttl)
        assert leases.arrive(state, "s1", run_id, strategy, now + later, ttl) == leases.apply(
            state, arrival
        )
    fresh = leases.apply(leases.initial_state("s1"), Arrive(run_id, strategy, later, ttl))
    assert leases.arrive(None, "s1", run_id, strategy, later, ttl) == fresh


@settings(max_examples=200, deadline=None)
@given(lease_events(), st.sampled_from(RUNS), time_steps)
def test_release_answers_as_apply_does(
    events: list[leases.LeaseEvent], run_id: str, later: float
) -> None:
    """``release``'s shortcut for a holder nobody waits behind changes nothing: on every
    state a lease can reach, it answers what ``apply`` answers for the release."""
    for state, now in states_reached(events):
        for releasing in {run_id, state.holder or run_id}:  # the holder too, when there is one
            expected = leases.apply(state, Release(releasing, now + later))
            assert leases.release(state, releasing, now + later) == expected


@st.composite
def enqueue_schedules(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Actions: ("arrive", _), ("release", _), ("tick", _), in a random interleaving."""
    n_runs = draw(st.integers(min_value=1, max_value=6))
    actions = [("arrive", i) for i in range(n_runs)]
    actions += [("release", 0)] * draw(st.integers(min_value=0, max_value=n_runs))
    actions += [("tick", 0)] * draw(st.integers(min_value=0, max_value=10))
    return draw(st.permutations(actions))


@settings(max_examples=200, deadline=None)
@given(enqueue_schedules(), st.randoms(use_true_random=False))
def test_enqueue_grants_every_run_once_in_arrival_order(
    schedule: list[tuple[str, int]], rng: random.Random
) -> None:
    """With ENQUEUE only, waiters that keep polling within their ttl and holders that
    release, every arrived run is granted exactly once, in arrival order."""
    ttl = 10.0
    now = 0.0
    state = leases.initial_state("s1")
    arrived: list[str] = []
    granted: list[str] = []
    waiting: set[str] = set()

    def record(run_id: str, decision: leases.LeaseDecision) -> None:
        if isinstance(decision, Granted):
            granted.append(run_id)
            waiting.discard(run_id)
        else:
            assert isinstance(decision, Waiting)
            waiting.add(run_id)

    def poll_everyone() -> None:
        nonlocal state
        for run_id in rng.sample(sorted(waiting), len(waiting)):
            state, decision = leases.apply(state, Poll(run_id, now, ttl))
            record(run_id, decision)

    def renew_or_release(release: bool) -> None:
        nonlocal state
        if state.holder is None:
            return
        if release:
            state, decision = leases.apply(state, Release(state.holder, now))
            assert decision == Released()
        else:
            state, decision = leases.apply(state, Renew(state.holder, now, ttl))
            assert isinstance(decision, Renewed)

    for action, index in schedule:
        if action == "arrive":
            run_id = f"r{index}"
            arrived.append(run_id)
            state, decision = leases.apply(state, Arrive(run_id, ENQUEUE, now, ttl))
            record(run_id, decision)
        elif action == "release":
            renew_or_release(release=True)
        else:
            # time passes, but less than a ttl; everyone alive shows it
            now += rng.uniform(0.0, ttl / 2)
            renew_or_release(release=False)
        poll_everyone()

    # drain: each holder eventually finishes, the waiters keep polling
    for _ in range(len(arrived) + 1):
        now += 1.0
        renew_or_release(release=True)
        poll_everyone()

    assert granted == arrived
    assert waiting == set()
    assert state.waiters == ()
