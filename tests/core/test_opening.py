"""Opening a turn in one trip (``opening.decide``) decides exactly what the step-by-step
path decides: for any world and request, both end with the same outcome and leave the same
identities, aliases, sessions and leases behind."""

from __future__ import annotations

import copy
from collections.abc import Generator
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import background, leases
from agenthost.sansio_core import effects as fx
from agenthost.sansio_core.authorization import Allowlist, NativeIdAllowlist
from agenthost.sansio_core.turns import (
    TurnOutcome,
    TurnRefused,
    TurnSettings,
    execute_turn,
    record_background_turn,
    resolve_turn,
    run_turn,
)
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ConversationScope,
    HostMessage,
    MultitaskStrategy,
    SessionMode,
)
from tests.core.identity_world import IdentityWorld, settings_for

PEOPLE = [ChannelIdentity("telegram", str(n)) for n in range(3)]


def step_by_step(
    request: ChannelRequest, *, run_id: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, TurnOutcome]:
    resolved = yield from resolve_turn(request, run_id=run_id, now=now, settings=settings)
    if isinstance(resolved, TurnRefused):
        return resolved
    return (yield from execute_turn(resolved, run_id=run_id, now=now, settings=settings))


@st.composite
def requests(draw: st.DrawFn) -> ChannelRequest:
    who = draw(st.sampled_from(PEOPLE))
    group = draw(st.sampled_from([None, "g1", "g2"]))
    scope = draw(st.sampled_from(list(ConversationScope)))
    keyed = draw(st.sampled_from([None, "k1", "k2"]))
    # a fork continues ``keyed`` (if any) and saves under a key of its own, as a Responses
    # create does: k1/k2 are then the keys of earlier forks
    fork = draw(st.sampled_from([None, "k1", "k2"]))
    caller_keyed = keyed is not None or fork is not None or draw(st.booleans())
    # A key minted for this request alone (a new fork's, or the one the core mints for a
    # caller-keyed request naming none) may be private until the reply (opening rule 5):
    # ``one_trip_and_step_by_step_decide_alike`` gives such a fork a key of its own.
    private = (fork is not None or (caller_keyed and keyed is None)) and draw(st.booleans())
    session = ChannelSession(
        key=keyed,
        conversation_id=group,
        is_direct=group is None,
        caller_keyed=caller_keyed,
        fork_key=fork,
        private_until_reply=private,
    )
    return ChannelRequest(
        channel=who.channel,
        identity=who,
        input=(HostMessage.user("hi"),),
        session=session,
        session_mode=draw(st.sampled_from(list(SessionMode))),
        conversation_scope=scope,
        multitask=draw(st.sampled_from([None, MultitaskStrategy.REJECT])),
    )


def settings_of(profile: str, record_last_seen: bool) -> TurnSettings:
    allowlist: Allowlist | None = None
    if profile == "allowlist":
        allowlist = NativeIdAllowlist({"telegram": ["0", "1"]})
    return attrs.evolve(settings_for(allowlist, can_link=False), record_last_seen=record_last_seen)


def with_own_private_key(request: ChannelRequest, run_id: str) -> ChannelRequest:
    """A private fork's key is minted for its request alone (``opening`` rule 5)."""
    if request.session.private_until_reply and request.session.fork_key is not None:
        private_key = attrs.evolve(request.session, fork_key=f"fresh-{run_id}")
        return attrs.evolve(request, session=private_key)
    return request


def snapshot(world: IdentityWorld) -> tuple[Any, ...]:
    return (
        world.identities,
        world.aliases,
        world.sessions,
        world.leases,
        world.seen,
        world.recorded_runs,
    )


def background_step_by_step(
    request: ChannelRequest, *, run_id: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, background.RunRecord | TurnRefused]:
    """How a host records a background run without the one trip: resolve, then the run."""
    resolved = yield from resolve_turn(request, run_id=run_id, now=now, settings=settings)
    if isinstance(resolved, TurnRefused):
        return resolved
    return background.new_run(
        token=run_id,
        request=request,
        isolation_key=resolved.session_ref.isolation_key,
        session_id=resolved.session_ref.session_id,
        session_key=resolved.session_ref.key,
        now=now,
        max_attempts=MAX_ATTEMPTS,
    )


MAX_ATTEMPTS = 3


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(requests(), st.booleans()), min_size=1, max_size=6),
    st.sampled_from(["open", "allowlist"]),
    st.booleans(),
)
def test_one_trip_and_step_by_step_decide_alike(
    turns: list[tuple[ChannelRequest, bool]], profile: str, record_last_seen: bool
) -> None:
    turn_settings = settings_of(profile, record_last_seen)
    one_trip, stepwise = IdentityWorld(), IdentityWorld()
    for n, (request, busy) in enumerate(turns):
        run_id = f"r{n}"
        request = with_own_private_key(request, run_id)
        if busy:
            # another run holds every existing session: a REJECT turn is refused, an
            # ENQUEUE one would wait forever here, so busy turns always reject
            request = attrs.evolve(request, multitask=MultitaskStrategy.REJECT)
            for world in (one_trip, stepwise):
                for session_id in list(world.sessions):
                    arrive = leases.Arrive("other", MultitaskStrategy.ENQUEUE, world.now, 1e9)
                    world.leases[session_id], _ = leases.apply(
                        world.leases.get(session_id, leases.initial_state(session_id)), arrive
                    )
        fast = one_trip.drive(
            run_turn(request, run_id=run_id, now=one_trip.now, settings=turn_settings)
        )
        slow = stepwise.drive(
            step_by_step(request, run_id=run_id, now=stepwise.now, settings=turn_settings)
        )
        if busy:
            for world in (one_trip, stepwise):
                for session_id, state in list(world.leases.items()):
                    world.leases[session_id], _ = leases.apply(
                        state, leases.Release("other", world.now)
                    )
        assert fast.kinds[0] == "OpenTurn"
        assert fast.outcome == slow.outcome
        assert snapshot(one_trip) == snapshot(stepwise)
        assert fast.kinds.count("OpenTurn") == 1 and "LoadContext" not in fast.kinds


def test_a_refused_stranger_is_decided_in_the_one_trip_and_leaves_nothing() -> None:
    world = IdentityWorld()
    closed = settings_for(NativeIdAllowlist({"telegram": ["someone-else"]}), can_link=False)
    request = ChannelRequest(
        channel="telegram", identity=PEOPLE[0], input=(HostMessage.user("hi"),)
    )
    before = copy.deepcopy(snapshot(world))
    driven = world.drive(run_turn(request, run_id="r1", now=world.now, settings=closed))
    assert driven.kinds == ["OpenTurn"]
    assert isinstance(driven.outcome, TurnRefused)
    assert snapshot(world) == before


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(requests(), st.booleans()), min_size=1, max_size=6),
    st.sampled_from(["open", "allowlist"]),
    st.booleans(),
)
def test_a_background_run_is_recorded_in_one_trip_as_step_by_step(
    turns: list[tuple[ChannelRequest, bool]], profile: str, record_last_seen: bool
) -> None:
    """Rule 11 of ``turns``: the same key, session, last-seen record and run as resolving
    the turn first and recording its run after, in one ``OpenTurn``; no lease is taken
    (the worker takes it when it runs), and a foreground turn between background ones
    finds the worlds alike."""
    turn_settings = settings_of(profile, record_last_seen)
    one_trip, stepwise = IdentityWorld(), IdentityWorld()
    for n, (request, in_foreground) in enumerate(turns):
        run_id = f"r{n}"
        request = with_own_private_key(request, run_id)
        if in_foreground:
            for world in (one_trip, stepwise):
                world.drive(run_turn(request, run_id=run_id, now=world.now, settings=turn_settings))
            assert snapshot(one_trip) == snapshot(stepwise)
            continue
        fast = one_trip.drive(
            record_background_turn(
                request,
                run_id=run_id,
                now=one_trip.now,
                settings=turn_settings,
                max_attempts=MAX_ATTEMPTS,
            )
        )
        slow = stepwise.drive(
            background_step_by_step(
                request, run_id=run_id, now=stepwise.now, settings=turn_settings
            )
        )
        if isinstance(slow.outcome, background.RunRecord):
            stepwise.recorded_runs[run_id] = slow.outcome  # the host's create_run
        assert fast.kinds == ["OpenTurn"]
        assert fast.outcome == slow.outcome
        assert snapshot(one_trip) == snapshot(stepwise)
        if isinstance(fast.outcome, background.RunRecord):
            assert one_trip.recorded_runs[run_id] == fast.outcome
            assert fast.outcome.max_attempts == MAX_ATTEMPTS
