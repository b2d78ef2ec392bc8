"""The per-session run lease: one run at a time per session, across replicas.

Rules (everything that decides who may run in a session lives in this file):

1. A session has at most one *holder*. A holder whose lease has expired counts as gone:
   its process died, and the next waiter may take over.
2. Waiters are served strictly in arrival order. A waiter that stops polling for longer
   than the lease time is dropped (its process died); a dropped waiter that polls again
   rejoins at the back, so its message is late but never lost.
3. A run that arrives at a busy session follows its multitask strategy:
   ``enqueue`` waits its turn, ``reject`` is answered busy at once, ``interrupt`` asks the
   holder to stop and waits at the front of the queue.
4. Only the holder may renew or release; a renew by anyone else answers ``LeaseLost`` so a
   run whose lease was taken over stops and saves nothing. A holder that arrives or polls
   again (a retried request) is granted again, with its lease renewed as by a heartbeat.

The state lives in the store (so it holds across replicas); the store applies these pure
transitions inside one transaction. Time arrives in every event. Per run the lease moves
through the states of :data:`RUN_LEASE_TRANSITIONS`, which ``apply`` checks on every step
and ``docs/`` draws.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs

from agenthost.sansio_core.types import MultitaskStrategy
from agenthost.sansio_core.values import builder, builds_fast


class RunLeaseState(enum.Enum):
    """Where one run stands towards its session's lease."""

    ABSENT = "absent"  # not known to the lease (not arrived yet, or finished)
    WAITING = "waiting"
    HOLDING = "holding"

    # Members are singletons, so identity is equality. ``apply`` looks every step up in
    # RUN_LEASE_TRANSITIONS; Enum's own hash is a Python call, twice a step.
    __hash__ = object.__hash__


@builds_fast
@attrs.frozen
class Waiter:
    run_id: str
    expires_at: float


@builds_fast
@attrs.frozen
class LeaseState:
    """The stored lease of one session."""

    session_id: str
    holder: str | None = None
    expires_at: float = 0.0
    interrupt_requested: bool = False
    waiters: tuple[Waiter, ...] = ()
    grants: int = 0  # how many times the lease was granted; a fencing counter

    def holder_alive(self, now: float) -> bool:
        return self.holder is not None and now < self.expires_at

    def in_use(self, now: float) -> bool:
        """A run holds the lease or waits for it (and has not been given up for dead)."""
        return self.holder_alive(now) or any(w.expires_at > now for w in self.waiters)

    def state_of(self, run_id: str, now: float) -> RunLeaseState:
        if self.holder == run_id:
            return RunLeaseState.HOLDING
        if self.waiters and any(waiter.run_id == run_id for waiter in self.waiters):
            return RunLeaseState.WAITING
        return RunLeaseState.ABSENT


# --- events -------------------------------------------------------------------------


@builds_fast
@attrs.frozen
class Arrive:
    run_id: str
    strategy: MultitaskStrategy
    now: float
    ttl: float


@builds_fast
@attrs.frozen
class Poll:
    """A waiting run asks again (and proves it is alive)."""

    run_id: str
    now: float
    ttl: float


@builds_fast
@attrs.frozen
class Renew:
    """The holder's heartbeat."""

    run_id: str
    now: float
    ttl: float


@builds_fast
@attrs.frozen
class Release:
    run_id: str
    now: float


@attrs.frozen
class Withdraw:
    """A waiting run gives up (its caller went away, or it was cancelled)."""

    run_id: str
    now: float


LeaseEvent = Arrive | Poll | Renew | Release | Withdraw


# --- decisions ----------------------------------------------------------------------


@builds_fast
@attrs.frozen
class Granted:
    fence: int


@builds_fast
@attrs.frozen
class Waiting:
    position: int  # 0 = next
    interrupting: str | None = None  # the holder asked to stop, when this run interrupts


@attrs.frozen
class Rejected:
    """The session is busy and the strategy is ``reject``."""


@builds_fast
@attrs.frozen
class Renewed:
    interrupt_requested: bool


@attrs.frozen
class LeaseLost:
    """The caller does not hold the lease (any more)."""


@attrs.frozen
class Released:
    pass


@attrs.frozen
class Withdrawn:
    pass


LeaseDecision = Granted | Waiting | Rejected | Renewed | LeaseLost | Released | Withdrawn

_RELEASED = Released()  # every turn ends with one; a value without fields need not be rebuilt

# Every turn grants and releases a lease: built without the trip through ``type.__call__``.
_lease_state = builder(LeaseState)
_granted = builder(Granted)


# (state before, event, state after) -> the decision kinds that step may answer.
RUN_LEASE_TRANSITIONS: dict[
    tuple[RunLeaseState, type[LeaseEvent], RunLeaseState], tuple[type[LeaseDecision], ...]
] = {
    (RunLeaseState.ABSENT, Arrive, RunLeaseState.HOLDING): (Granted,),
    (RunLeaseState.ABSENT, Arrive, RunLeaseState.WAITING): (Waiting,),
    (RunLeaseState.ABSENT, Arrive, RunLeaseState.ABSENT): (Rejected,),
    # a repeated arrival (a retried request) never queues twice
    (RunLeaseState.WAITING, Arrive, RunLeaseState.WAITING): (Waiting,),
    (RunLeaseState.WAITING, Arrive, RunLeaseState.HOLDING): (Granted,),
    (RunLeaseState.HOLDING, Arrive, RunLeaseState.HOLDING): (Granted,),
    (RunLeaseState.WAITING, Poll, RunLeaseState.WAITING): (Waiting,),
    (RunLeaseState.WAITING, Poll, RunLeaseState.HOLDING): (Granted,),
    (RunLeaseState.ABSENT, Poll, RunLeaseState.WAITING): (Waiting,),  # dropped, rejoins
    (RunLeaseState.ABSENT, Poll, RunLeaseState.HOLDING): (Granted,),  # dropped, queue empty
    # a repeated poll (its granting answer was lost) is granted again, never queued behind itself
    (RunLeaseState.HOLDING, Poll, RunLeaseState.HOLDING): (Granted,),
    (RunLeaseState.HOLDING, Renew, RunLeaseState.HOLDING): (Renewed,),
    (RunLeaseState.WAITING, Renew, RunLeaseState.WAITING): (LeaseLost,),
    (RunLeaseState.ABSENT, Renew, RunLeaseState.ABSENT): (LeaseLost,),
    (RunLeaseState.HOLDING, Release, RunLeaseState.ABSENT): (Released,),
    (RunLeaseState.WAITING, Release, RunLeaseState.WAITING): (LeaseLost,),
    (RunLeaseState.ABSENT, Release, RunLeaseState.ABSENT): (LeaseLost,),
    (RunLeaseState.WAITING, Withdraw, RunLeaseState.ABSENT): (Withdrawn,),
    (RunLeaseState.ABSENT, Withdraw, RunLeaseState.ABSENT): (Withdrawn,),
    (RunLeaseState.HOLDING, Withdraw, RunLeaseState.HOLDING): (LeaseLost,),
}


# Read as globals in ``apply``: ``RunLeaseState.HOLDING`` goes through the enum's metaclass,
# about ten times the cost (CPython 3.11), four times a turn.
_HOLDING, _ABSENT = RunLeaseState.HOLDING, RunLeaseState.ABSENT


# Every step the table allows, as ``(before, event, after, decision)`` with the decision's
# exact class: ``apply`` checks a step with one set look-up, and a step not found here goes
# through the table's own ``isinstance`` check (``_check_step``) before it is refused.
_ALLOWED_STEPS = frozenset(
    (before, event, after, decision)
    for (before, event, after), decisions in RUN_LEASE_TRANSITIONS.items()
    for decision in decisions
)


class LeaseTransitionError(AssertionError):
    """The lease logic produced a step its own table forbids (a bug in this module)."""


def apply(state: LeaseState, event: LeaseEvent) -> tuple[LeaseState, LeaseDecision]:
    """Apply one event to a session's lease; return the new state and the answer."""
    run_id, now, kind = event.run_id, event.now, type(event)
    step = _STEPS.get(kind)
    if step is None:
        raise LeaseTransitionError(f"{kind.__name__} is not a lease event")
    # ``state_of``, with its common answers inline: every turn applies two events.
    if state.holder == run_id:
        before = _HOLDING
    else:
        before = state.state_of(run_id, now) if state.waiters else _ABSENT
    new_state, decision = step(
        _drop_expired_waiters(state, event) if state.waiters else state, event
    )
    if new_state.holder == run_id:
        after = _HOLDING
    else:
        after = new_state.state_of(run_id, now) if new_state.waiters else _ABSENT
    if (before, kind, after, type(decision)) not in _ALLOWED_STEPS:
        _check_step(before, kind, after, decision)
    return new_state, decision


def _check_step(
    before: RunLeaseState, kind: type, after: RunLeaseState, decision: LeaseDecision
) -> None:
    """The table's own check, for a step ``_ALLOWED_STEPS`` does not list as it is."""
    allowed = RUN_LEASE_TRANSITIONS.get((before, kind, after))
    if allowed is None or not isinstance(decision, allowed):
        raise LeaseTransitionError(
            f"lease step {before.value} --{kind.__name__}--> {after.value} "
            f"answering {type(decision).__name__} is not in RUN_LEASE_TRANSITIONS"
        )


def initial_state(session_id: str) -> LeaseState:
    return _lease_state(session_id)


_FIRST_GRANT = Granted(fence=1)  # frozen: one value serves every new session's first turn
_arrival = builder(Arrive)


def arrive(
    state: LeaseState | None,
    session_id: str,
    run_id: str,
    strategy: MultitaskStrategy,
    now: float,
    ttl: float,
) -> tuple[LeaseState, LeaseDecision]:
    """``apply(state or initial_state(session_id), Arrive(run_id, strategy, now, ttl))``.

    A turn nearly always arrives at a free lease (a new session's, or one the session's
    last run released), which is granted at once: that step is taken here without building
    the event or the initial state and without the table check, which allows it whatever
    the strategy (absent -> holding, answered ``Granted``). Every other arrival goes
    through :func:`apply`.
    """
    if state is None:
        return _lease_state(session_id, run_id, now + ttl, False, (), 1), _FIRST_GRANT
    if not state.waiters and (
        state.holder is None or (state.holder != run_id and now >= state.expires_at)
    ):
        return _grant(state, run_id, now, ttl)
    return apply(state, _arrival(run_id, strategy, now, ttl))


def release(state: LeaseState, run_id: str, now: float) -> tuple[LeaseState, LeaseDecision]:
    """``apply(state, Release(run_id, now))``: every turn ends with one, nearly always by
    the holder of a lease nobody waits for, a step taken here directly (holding -> absent,
    answered ``Released``); every other release goes through :func:`apply`."""
    if state.holder == run_id and not state.waiters:
        return _lease_state(state.session_id, None, 0.0, False, (), state.grants), _RELEASED
    return apply(state, Release(run_id, now))


def _drop_expired_waiters(state: LeaseState, event: LeaseEvent) -> LeaseState:
    if not state.waiters:
        return state
    alive = tuple(w for w in state.waiters if w.run_id == event.run_id or w.expires_at > event.now)
    if len(alive) == len(state.waiters):
        return state
    return attrs.evolve(state, waiters=alive)


def _grant(state: LeaseState, run_id: str, now: float, ttl: float) -> tuple[LeaseState, Granted]:
    fence = state.grants + 1
    # Built directly rather than with attrs.evolve: this runs on every turn.
    waiters = tuple(w for w in state.waiters if w.run_id != run_id) if state.waiters else ()
    return _lease_state(state.session_id, run_id, now + ttl, False, waiters, fence), _granted(fence)


def _regrant(state: LeaseState, now: float, ttl: float) -> tuple[LeaseState, Granted]:
    # The holder asks again (a retried arrival or poll). "Granted" tells it it holds for
    # another ttl, so the lease must say so too, or a waiter could take over meanwhile.
    expires_at = max(state.expires_at, now + ttl)
    return attrs.evolve(state, expires_at=expires_at), Granted(fence=state.grants)


# One function per event, looked up by the event's class: ``apply`` runs twice a turn, and
# one dictionary look-up costs less than walking a chain of ``isinstance`` to the event.


def _arrive(state: LeaseState, event: Arrive) -> tuple[LeaseState, LeaseDecision]:
    now = event.now
    if state.holder == event.run_id:
        return _regrant(state, now, event.ttl)
    if state.waiters and state.state_of(event.run_id, now) is RunLeaseState.WAITING:
        return _poll(state, Poll(event.run_id, now, event.ttl))
    # the lease is free (``not state.holder_alive(now)``, inline) and nobody waits
    if not state.waiters and (state.holder is None or now >= state.expires_at):
        return _grant(state, event.run_id, now, event.ttl)
    if event.strategy is MultitaskStrategy.REJECT:
        return state, Rejected()
    waiter = Waiter(event.run_id, now + event.ttl)
    if event.strategy is MultitaskStrategy.INTERRUPT:
        interrupting = state.holder if state.holder_alive(now) else None
        return (
            attrs.evolve(
                state,
                waiters=(waiter, *state.waiters),
                interrupt_requested=state.interrupt_requested or interrupting is not None,
            ),
            Waiting(position=0, interrupting=interrupting),
        )
    return (
        attrs.evolve(state, waiters=(*state.waiters, waiter)),
        Waiting(position=len(state.waiters)),
    )


def _poll(state: LeaseState, event: Poll) -> tuple[LeaseState, LeaseDecision]:
    now = event.now
    if state.holder == event.run_id:
        return _regrant(state, now, event.ttl)
    positions = [i for i, w in enumerate(state.waiters) if w.run_id == event.run_id]
    if not positions:
        if not state.holder_alive(now) and not state.waiters:
            return _grant(state, event.run_id, now, event.ttl)
        waiter = Waiter(event.run_id, now + event.ttl)
        return (
            attrs.evolve(state, waiters=(*state.waiters, waiter)),
            Waiting(position=len(state.waiters)),
        )
    position = positions[0]
    if position == 0 and not state.holder_alive(now):
        return _grant(state, event.run_id, now, event.ttl)
    refreshed = tuple(
        Waiter(w.run_id, now + event.ttl) if w.run_id == event.run_id else w for w in state.waiters
    )
    return attrs.evolve(state, waiters=refreshed), Waiting(position=position)


def _renew(state: LeaseState, event: Renew) -> tuple[LeaseState, LeaseDecision]:
    if state.holder != event.run_id:
        return state, LeaseLost()
    # An expired holder nobody has replaced yet may carry on: nothing was lost.
    return (
        attrs.evolve(state, expires_at=event.now + event.ttl),
        Renewed(interrupt_requested=state.interrupt_requested),
    )


def _release(state: LeaseState, event: Release) -> tuple[LeaseState, LeaseDecision]:
    if state.holder != event.run_id:
        return state, LeaseLost()
    released = _lease_state(state.session_id, None, 0.0, False, state.waiters, state.grants)
    return released, _RELEASED


def _withdraw(state: LeaseState, event: Withdraw) -> tuple[LeaseState, LeaseDecision]:
    if state.holder == event.run_id:
        return state, LeaseLost()
    return (
        attrs.evolve(state, waiters=tuple(w for w in state.waiters if w.run_id != event.run_id)),
        Withdrawn(),
    )


_STEPS: dict[type, Callable[[LeaseState, Any], tuple[LeaseState, LeaseDecision]]] = {
    Arrive: _arrive,
    Poll: _poll,
    Renew: _renew,
    Release: _release,
    Withdraw: _withdraw,
}
