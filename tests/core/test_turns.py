"""The turn lifecycle, driven by a tiny in-test interpreter: no event loop, no store.

``World`` plays the backend: it answers each effect from a few dicts, applying the lease
transitions exactly as a store would inside its transaction. Tests step the generators with
``send`` and look at the effects they yielded and at what the world holds afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import effects as fx
from agenthost.sansio_core import leases, opening, sessions
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import DIRECT, ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.turns import (
    MessageRecorded,
    RefusalReason,
    ResolvedTurn,
    TurnCompleted,
    TurnFailed,
    TurnOutcome,
    TurnRefused,
    TurnSettings,
    execute_turn,
    record_proactive_message,
    resolve_turn,
    run_turn,
)
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    HostMessage,
    MultitaskStrategy,
    SessionMode,
    SessionRef,
)
from tests.core.opening_world import open_in_dicts

ALICE = ChannelIdentity("telegram", "123")
ENQUEUE = MultitaskStrategy.ENQUEUE


def inputs_of(state: Any) -> list[str]:
    return list(state["inputs"]) if state else []


def text_of(request: ChannelRequest) -> str:
    if isinstance(request.input, tuple):
        return "".join(message.text for message in request.input)
    return repr(request.input)


def echo_target(effect: fx.RunTarget) -> fx.TargetSucceeded:
    """Remembers every input it saw in its session state."""
    text = text_of(effect.request)
    return fx.TargetSucceeded(
        result={"echo": text},
        text=f"echo {text}",
        new_state={"inputs": [*inputs_of(effect.session_state), text]},
    )


@attrs.define
class World:
    """A dict-backed store plus the application's hooks and target."""

    identities: dict[tuple[str, str], str] = attrs.field(factory=dict)
    aliases: dict[tuple[str, str], SessionAlias] = attrs.field(factory=dict)
    sessions: dict[str, SessionRecord] = attrs.field(factory=dict)
    leases: dict[str, leases.LeaseState] = attrs.field(factory=dict)
    now: float = 1000.0
    ttl: float = 1e9  # no lease expires unless a test says so
    resolver: Callable[[ChannelIdentity], str | None] | None = None
    run_hook: Callable[[ChannelRequest, str], ChannelRequest] | None = None
    target: Callable[[fx.RunTarget], fx.TargetSucceeded | fx.TargetFailed] = echo_target
    arrivals: list[str] = attrs.field(factory=list)
    seen: list[tuple[str, LastSeen]] = attrs.field(factory=list)  # last-seen writes

    def answer(self, effect: fx.Effect) -> Any:
        if isinstance(effect, fx.LoadContext):
            key = self.identities.get((effect.identity.channel, effect.identity.native_id))
            alias = None
            if key is not None and effect.scope is not None:
                alias = self.aliases.get((effect.scope.owner or key, effect.scope.qualifier))
            return fx.RequestContext(key, alias)
        if isinstance(effect, fx.OpenTurn):
            self.arrivals.append(effect.opening.run_id)
            return self.open_turn(attrs.evolve(effect.opening, lease_seconds=self.ttl))
        if isinstance(effect, fx.CallIdentityResolver):
            assert self.resolver is not None
            return self.resolver(effect.identity)
        if isinstance(effect, fx.IssueIsolationKey):
            native = (effect.identity.channel, effect.identity.native_id)
            return self.identities.setdefault(native, effect.candidate)
        if isinstance(effect, fx.LoadAlias):
            assert effect.scope.owner is not None
            return self.aliases.get((effect.scope.owner, effect.scope.qualifier))
        if isinstance(effect, fx.CreateSession):
            alias = effect.alias
            winner = self.aliases.setdefault((alias.owner, alias.qualifier), alias)
            if winner is alias:
                self.sessions[alias.session_id] = sessions.new_session_record(alias, effect.now)
            return winner
        if isinstance(effect, fx.CallRunHook):
            assert self.run_hook is not None
            return self.run_hook(effect.request, effect.isolation_key)
        if isinstance(effect, fx.AcquireLease):
            self.arrivals.append(effect.run_id)
            event = leases.Arrive(effect.run_id, effect.strategy, self.now, self.ttl)
            return self._lease_step(effect.session_id, event)
        if isinstance(effect, fx.WaitForLease):
            return self._lease_step(
                effect.session_id, leases.Poll(effect.run_id, self.now, self.ttl)
            )
        if isinstance(effect, fx.RunTarget):
            return self.target(effect)
        if isinstance(effect, fx.AppendAssistantMessage):
            return {"inputs": [*inputs_of(effect.state), f"assistant: {effect.text}"]}
        if isinstance(effect, fx.FinishRun):
            state = self.leases[effect.session_id]
            saved = False
            if state.holder == effect.run_id and effect.session is not None:
                self.sessions[effect.session_id] = effect.session
                saved = True
            self.leases[effect.session_id], _ = leases.apply(
                state, leases.Release(effect.run_id, self.now)
            )
            return saved
        raise AssertionError(f"unknown effect {effect!r}")

    def open_turn(self, plan: opening.Opening) -> opening.Outcome:
        return open_in_dicts(
            plan,
            identities=self.identities,
            aliases=self.aliases,
            sessions=self.sessions,
            lease_states=self.leases,
            seen=self.seen,
        )

    def _lease_step(self, session_id: str, event: leases.LeaseEvent) -> fx.LeaseAnswer:
        state = self.leases.get(session_id, leases.initial_state(session_id))
        self.leases[session_id], decision = leases.apply(state, event)
        granted = isinstance(decision, leases.Granted)
        return fx.LeaseAnswer(decision, self.sessions.get(session_id) if granted else None)

    # --- what a host does outside a turn ---

    def reset_session(self, scope: ScopeKey, new_session_id: str) -> SessionAlias:
        assert scope.owner is not None
        current = self.aliases.get((scope.owner, scope.qualifier))
        alias = sessions.rotate(scope, current, new_session_id=new_session_id, now=self.now)
        self.aliases[(alias.owner, alias.qualifier)] = alias
        self.sessions[alias.session_id] = sessions.new_session_record(alias, self.now)
        return alias

    def session_of(self, identity: ChannelIdentity, qualifier: str = DIRECT) -> SessionRecord:
        key = self.identities[(identity.channel, identity.native_id)]
        return self.sessions[self.aliases[(key, qualifier)].session_id]


@attrs.define
class Driven:
    outcome: Any
    effects: list[fx.Effect]

    def of_type(self, kind: type) -> list[Any]:
        return [effect for effect in self.effects if isinstance(effect, kind)]

    @property
    def kinds(self) -> list[str]:
        return [type(effect).__name__ for effect in self.effects]


def drive(gen: Generator[fx.Effect, Any, Any], world: World, *, max_steps: int = 50) -> Driven:
    """Step a generator to its end, answering every effect from the world."""
    seen: list[fx.Effect] = []
    try:
        effect = next(gen)
        for _ in range(max_steps):
            seen.append(effect)
            effect = gen.send(world.answer(effect))
    except StopIteration as stop:
        return Driven(stop.value, seen)
    raise AssertionError(f"the turn did not finish in {max_steps} steps: {seen[-3:]}")


def message(
    text: str,
    identity: ChannelIdentity = ALICE,
    *,
    session: ChannelSession | None = None,
    mode: SessionMode = SessionMode.AUTO,
    multitask: MultitaskStrategy | None = None,
) -> ChannelRequest:
    return ChannelRequest(
        channel=identity.channel,
        identity=identity,
        input=(HostMessage.user(text),),
        session=session or ChannelSession(),
        session_mode=mode,
        multitask=multitask,
    )


def turn(
    world: World,
    request: ChannelRequest,
    run_id: str,
    settings: TurnSettings | None = None,
) -> Driven:
    return drive(
        run_turn(request, run_id=run_id, now=world.now, settings=settings or TurnSettings()),
        world,
    )


def failing(error: str = "target exploded", *, cancelled: bool = False) -> Callable[..., Any]:
    def target(effect: fx.RunTarget) -> fx.TargetFailed:
        return fx.TargetFailed(error, cancelled=cancelled)

    return target


# --- one request at a time --------------------------------------------------------------


def test_first_request_issues_a_key_creates_a_session_runs_and_saves() -> None:
    world = World()
    driven = turn(world, message("hello"), "r1")

    # key, session and lease in one trip; save and release in one more
    assert driven.kinds == ["OpenTurn", "RunTarget", "FinishRun"]
    ref = SessionRef("ik_r1", "s_r1", None)
    assert driven.outcome == TurnCompleted(
        result=driven.outcome.result, saved=True
    )  # shape first, then the details
    assert driven.outcome.result.session == ref
    assert driven.outcome.result.result == {"echo": "hello"}
    assert driven.outcome.result.text == "echo hello"

    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_ref == ref
    assert run.session_state is None
    assert run.run_id == "r1"
    assert run.request == message("hello")

    assert world.identities == {("telegram", "123"): "ik_r1"}
    assert world.aliases[("ik_r1", DIRECT)].session_id == "s_r1"
    saved = world.sessions["s_r1"]
    assert saved.state == {"inputs": ["hello"]}
    assert saved.turns == 1
    assert world.leases["s_r1"].holder is None


def test_second_request_reuses_the_session_in_one_round_trip() -> None:
    world = World()
    turn(world, message("hello"), "r1")
    driven = turn(world, message("again"), "r2")

    # identity, alias, session and lease come back together, in one trip
    assert driven.kinds == ["OpenTurn", "RunTarget", "FinishRun"]
    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_state == {"inputs": ["hello"]}
    assert run.session_ref == SessionRef("ik_r1", "s_r1", None)
    assert isinstance(driven.outcome, TurnCompleted)
    assert driven.outcome.result.session.session_id == "s_r1"
    assert world.sessions["s_r1"].state == {"inputs": ["hello", "again"]}
    assert world.sessions["s_r1"].turns == 2
    assert len(world.sessions) == 1


@pytest.mark.parametrize("cancelled", [False, True])
def test_a_failed_run_does_not_change_the_saved_session(cancelled: bool) -> None:
    world = World()
    turn(world, message("hello"), "r1")
    before = world.sessions["s_r1"]

    world.target = failing("boom", cancelled=cancelled)
    driven = turn(world, message("poison"), "r2")

    assert driven.outcome == TurnFailed(
        "boom", SessionRef("ik_r1", "s_r1", None), cancelled=cancelled
    )
    (finish,) = driven.of_type(fx.FinishRun)
    assert finish == fx.FinishRun("s_r1", "r2", None)
    assert world.sessions["s_r1"] == before
    assert world.leases["s_r1"].holder is None  # released all the same

    world.target = echo_target
    driven = turn(world, message("next"), "r3")
    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_state == {"inputs": ["hello"]}  # the poison never got in
    assert world.sessions["s_r1"].state == {"inputs": ["hello", "next"]}


def test_required_without_a_session_is_refused_before_running() -> None:
    world = World()
    driven = turn(world, message("hello", mode=SessionMode.REQUIRED), "r1")
    assert driven.outcome == TurnRefused(
        RefusalReason.SESSION_NOT_FOUND, "no session matches the request"
    )
    assert driven.of_type(fx.RunTarget) == []
    assert driven.of_type(fx.CreateSession) == []
    assert driven.of_type(fx.AcquireLease) == []
    assert world.sessions == {}
    assert world.aliases == {}


def test_required_with_a_session_runs_in_it() -> None:
    world = World()
    turn(world, message("hello"), "r1")
    driven = turn(world, message("more", mode=SessionMode.REQUIRED), "r2")
    assert isinstance(driven.outcome, TurnCompleted)
    assert driven.outcome.result.session.session_id == "s_r1"
    assert world.sessions["s_r1"].state == {"inputs": ["hello", "more"]}


def test_disabled_runs_stateless_without_a_lease() -> None:
    world = World()
    turn(world, message("hello"), "r1")
    driven = turn(world, message("one-off", mode=SessionMode.DISABLED), "r2")
    assert driven.kinds == ["OpenTurn", "RunTarget"]
    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_state is None
    assert run.session_ref == SessionRef("ik_r1", None, None)
    assert isinstance(driven.outcome, TurnCompleted)
    assert driven.outcome.saved is False
    assert world.sessions["s_r1"].state == {"inputs": ["hello"]}


def test_custom_resolver_refusing_ends_the_turn() -> None:
    world = World(resolver=lambda identity: None)
    driven = turn(world, message("hello"), "r1", TurnSettings(custom_resolver=True))
    assert driven.outcome == TurnRefused(
        RefusalReason.IDENTITY_REFUSED, "the identity resolver refused"
    )
    assert driven.kinds == ["CallIdentityResolver"]
    assert driven.of_type(fx.RunTarget) == []
    assert world.identities == {}


def test_custom_resolver_key_owns_the_session() -> None:
    world = World(resolver=lambda identity: f"app-user-{identity.native_id}")
    settings = TurnSettings(custom_resolver=True)
    first = turn(world, message("hello"), "r1", settings)
    assert first.kinds == [
        "CallIdentityResolver",
        "LoadAlias",
        "CreateSession",
        "AcquireLease",
        "RunTarget",
        "FinishRun",
    ]
    assert first.of_type(fx.RunTarget)[0].session_ref == SessionRef("app-user-123", "s_r1", None)
    second = turn(world, message("again"), "r2", settings)
    assert second.of_type(fx.RunTarget)[0].session_state == {"inputs": ["hello"]}
    assert world.aliases[("app-user-123", DIRECT)].session_id == "s_r1"


def test_reject_while_another_run_holds_the_lease_is_busy() -> None:
    world = World()
    turn(world, message("hello"), "r1")
    world.leases["s_r1"], _ = leases.apply(
        world.leases["s_r1"], leases.Arrive("other", ENQUEUE, world.now, world.ttl)
    )
    driven = turn(world, message("now!", multitask=MultitaskStrategy.REJECT), "r2")
    assert driven.outcome == TurnRefused(
        RefusalReason.SESSION_BUSY, "the session is busy with another run"
    )
    (opened,) = driven.of_type(fx.OpenTurn)
    assert opened.opening.strategy is MultitaskStrategy.REJECT
    assert opened.opening.run_id == "r2"
    assert driven.of_type(fx.RunTarget) == []
    assert driven.of_type(fx.FinishRun) == []
    assert world.leases["s_r1"].holder == "other"
    assert world.leases["s_r1"].waiters == ()


def test_the_host_default_strategy_applies_when_the_request_names_none() -> None:
    world = World()
    turn(world, message("hello"), "r1")
    world.leases["s_r1"], _ = leases.apply(
        world.leases["s_r1"], leases.Arrive("other", ENQUEUE, world.now, world.ttl)
    )
    settings = TurnSettings(default_multitask=MultitaskStrategy.REJECT)
    driven = turn(world, message("now!"), "r2", settings)
    assert driven.of_type(fx.OpenTurn)[0].opening.strategy is MultitaskStrategy.REJECT
    assert isinstance(driven.outcome, TurnRefused)


@pytest.mark.parametrize(
    ("strategy", "interrupting"),
    [(MultitaskStrategy.ENQUEUE, None), (MultitaskStrategy.INTERRUPT, "other")],
)
def test_a_busy_session_makes_the_turn_wait_then_run(
    strategy: MultitaskStrategy, interrupting: str | None
) -> None:
    world = World()
    turn(world, message("hello"), "r1")
    world.leases["s_r1"], _ = leases.apply(
        world.leases["s_r1"], leases.Arrive("other", ENQUEUE, world.now, world.ttl)
    )
    gen = run_turn(
        message("queued", multitask=strategy), run_id="r2", now=world.now, settings=TurnSettings()
    )
    effect = next(gen)
    assert isinstance(effect, fx.OpenTurn)  # it arrives at the lease in its first trip
    effect = gen.send(world.answer(effect))
    assert effect == fx.WaitForLease("s_r1", "r2", interrupting)
    if interrupting:
        assert world.leases["s_r1"].interrupt_requested is True
    effect = gen.send(world.answer(effect))  # still busy: poll again
    assert isinstance(effect, fx.WaitForLease)

    world.leases["s_r1"], _ = leases.apply(world.leases["s_r1"], leases.Release("other", 1.0))
    effect = gen.send(world.answer(effect))
    assert isinstance(effect, fx.RunTarget)
    assert effect.session_state == {"inputs": ["hello"]}
    effect = gen.send(world.answer(effect))
    assert isinstance(effect, fx.FinishRun)
    with pytest.raises(StopIteration) as stop:
        gen.send(world.answer(effect))
    assert isinstance(stop.value.value, TurnCompleted)
    assert world.sessions["s_r1"].state == {"inputs": ["hello", "queued"]}


def test_run_hook_rewrites_what_the_target_receives() -> None:
    workflow_input = {"topic": "quarterly numbers", "depth": 2}
    calls: list[tuple[ChannelRequest, str]] = []

    def hook(request: ChannelRequest, isolation_key: str) -> ChannelRequest:
        calls.append((request, isolation_key))
        return attrs.evolve(request, input=workflow_input)

    world = World(run_hook=hook)
    driven = turn(world, message("hello"), "r1", TurnSettings(run_hook=True))
    assert driven.kinds.index("CallRunHook") < driven.kinds.index("CreateSession")
    assert calls == [(message("hello"), "ik_r1")]
    (run,) = driven.of_type(fx.RunTarget)
    assert run.request.input == workflow_input
    assert run.request == attrs.evolve(message("hello"), input=workflow_input)


def test_run_hook_that_moves_the_session_is_looked_up_again() -> None:
    world = World()
    turn(world, message("hello"), "r1")  # alice's direct session exists

    def hook(request: ChannelRequest, isolation_key: str) -> ChannelRequest:
        return attrs.evolve(request, session=ChannelSession(key="project-x"))

    world.run_hook = hook
    driven = turn(world, message("about x"), "r2", TurnSettings(run_hook=True))
    # the one-trip context saw the direct alias; the hook moved the request elsewhere
    assert driven.of_type(fx.LoadAlias) == [
        fx.LoadAlias(ScopeKey("ik_r1", "telegram:key:project-x"))
    ]
    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_ref == SessionRef("ik_r1", "s_r2", "project-x")
    assert run.session_state is None
    assert world.sessions["s_r1"].state == {"inputs": ["hello"]}
    assert world.sessions["s_r2"].state == {"inputs": ["about x"]}


def test_reset_yields_a_fresh_session_and_the_old_one_stays_readable() -> None:
    world = World()
    turn(world, message("hello"), "r1")
    world.reset_session(ScopeKey("ik_r1", DIRECT), "s_reset1")
    driven = turn(world, message("fresh start"), "r2")

    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_ref == SessionRef("ik_r1", "s_reset1", None)
    assert run.session_state is None
    assert world.aliases[("ik_r1", DIRECT)].generation == 2
    assert world.sessions["s_reset1"].state == {"inputs": ["fresh start"]}
    assert world.sessions["s_r1"].state == {"inputs": ["hello"]}  # still there


def test_caller_keyed_sessions_are_bound_to_the_caller() -> None:
    world = World()
    caller = ChannelIdentity("responses", "key-holder-a")
    first = turn(world, message("hi", caller, session=ChannelSession(caller_keyed=True)), "r1")
    ref = first.of_type(fx.RunTarget)[0].session_ref
    assert ref.key == "s_r1"  # the fresh key, handed back to the caller

    cont = message("more", caller, session=ChannelSession(key="s_r1", caller_keyed=True))
    second = turn(world, cont, "r2")
    assert second.of_type(fx.RunTarget)[0].session_state == {"inputs": ["hi"]}

    # another caller sending the same key reaches nothing of the first caller's
    intruder = ChannelIdentity("responses", "key-holder-b")
    stolen = message("leak?", intruder, session=ChannelSession(key="s_r1", caller_keyed=True))
    refused = turn(world, attrs.evolve(stolen, session_mode=SessionMode.REQUIRED), "r3")
    assert isinstance(refused.outcome, TurnRefused)
    assert refused.outcome.reason is RefusalReason.SESSION_NOT_FOUND
    fresh = turn(world, stolen, "r4")
    assert fresh.of_type(fx.RunTarget)[0].session_state is None
    assert fresh.of_type(fx.RunTarget)[0].session_ref.session_id != ref.session_id


def test_a_telegram_looking_key_never_reaches_the_telegram_user() -> None:
    world = World()
    turn(world, message("secret", ALICE), "r1")
    sneaky = ChannelIdentity("responses", "anon")
    req = message("show me", sneaky, session=ChannelSession(key="telegram:123"))
    driven = turn(world, req, "r2")
    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_state is None
    assert run.session_ref.session_id != "s_r1"


def test_resolve_then_execute_later() -> None:
    """The background path: settle the turn, record it, run it afterwards."""
    world = World()
    resolved = drive(
        resolve_turn(message("later"), run_id="r1", now=world.now, settings=TurnSettings()),
        world,
    )
    assert resolved.outcome == ResolvedTurn(message("later"), SessionRef("ik_r1", "s_r1", None))
    assert resolved.of_type(fx.AcquireLease) == []
    assert resolved.of_type(fx.RunTarget) == []
    executed = drive(
        execute_turn(resolved.outcome, run_id="r1", now=world.now, settings=TurnSettings()),
        world,
    )
    assert executed.kinds == ["AcquireLease", "RunTarget", "FinishRun"]
    assert world.sessions["s_r1"].state == {"inputs": ["later"]}


def test_a_run_whose_lease_was_taken_over_saves_nothing() -> None:
    world = World(ttl=10.0)
    turn(world, message("hello"), "r1")
    gen = run_turn(message("slow"), run_id="r2", now=world.now, settings=TurnSettings())
    effect = next(gen)
    while not isinstance(effect, fx.RunTarget):
        effect = gen.send(world.answer(effect))
    # r2's lease lapses while it runs, and r3 takes the session over
    world.now += 11.0
    taken = turn(world, message("fast"), "r3")
    assert isinstance(taken.outcome, TurnCompleted)
    effect = gen.send(world.answer(effect))
    assert isinstance(effect, fx.FinishRun)
    assert effect.session is not None  # r2 asks to save...
    with pytest.raises(StopIteration) as stop:
        gen.send(world.answer(effect))
    outcome = stop.value.value
    assert isinstance(outcome, TurnCompleted)
    assert outcome.saved is False  # ...and the store refuses: r2 no longer holds the lease
    assert world.sessions["s_r1"].state == {"inputs": ["hello", "fast"]}


# --- properties -------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=12))
def test_a_failed_run_never_changes_the_saved_session(steps: list[tuple[bool, bool]]) -> None:
    world = World()
    expected: list[str] = []
    for i, (succeeds, cancelled) in enumerate(steps):
        text = f"m{i}"
        world.target = echo_target if succeeds else failing(cancelled=cancelled)
        before = dict(world.sessions)
        driven = turn(world, message(text), f"r{i}")
        (run,) = driven.of_type(fx.RunTarget)
        assert inputs_of(run.session_state) == expected
        (finish,) = driven.of_type(fx.FinishRun)
        if succeeds:
            expected.append(text)
            assert isinstance(driven.outcome, TurnCompleted)
            assert finish.session is not None
        else:
            assert isinstance(driven.outcome, TurnFailed)
            assert driven.outcome.cancelled is cancelled
            assert finish.session is None
            # nothing stored changed, other than a first turn creating the empty session
            assert {k: v for k, v in world.sessions.items() if k in before} == before
        record = world.session_of(ALICE)
        assert inputs_of(record.state) == expected
        assert record.turns == len(expected)
        assert world.leases[record.session_id].holder is None


@attrs.define
class Scheduler:
    """Runs several turns at once, stepping a random runnable one each time."""

    world: World
    rng: random.Random
    pending: dict[str, fx.Effect | None] = attrs.field(factory=dict)
    gens: dict[str, Generator[fx.Effect, Any, TurnOutcome]] = attrs.field(factory=dict)
    outcomes: dict[str, TurnOutcome] = attrs.field(factory=dict)
    run_order: list[str] = attrs.field(factory=list)
    running: dict[str, str] = attrs.field(factory=dict)  # session_id -> run_id
    target_sessions: dict[str, str] = attrs.field(factory=dict)

    def add(self, run_id: str, request: ChannelRequest) -> None:
        self.gens[run_id] = run_turn(
            request, run_id=run_id, now=self.world.now, settings=TurnSettings()
        )
        self.pending[run_id] = None

    def run(self, max_steps: int = 2000) -> None:
        # Random, but fair: every fourth step goes to the turn left waiting longest, so a
        # random source that keeps picking one waiting turn cannot starve the lease holder
        # (a real event loop runs every ready task eventually).
        last_stepped: dict[str, int] = {}
        for step in range(max_steps):
            if not self.gens:
                return
            self.world.now += 1.0
            if step % 4 == 3:
                run_id = min(sorted(self.gens), key=lambda r: last_stepped.get(r, -1))
            else:
                run_id = self.rng.choice(sorted(self.gens))
            last_stepped[run_id] = step
            self.step(run_id)
        raise AssertionError("the turns did not all finish")

    def step(self, run_id: str) -> None:
        gen, effect = self.gens[run_id], self.pending[run_id]
        try:
            if effect is None:
                new_effect = next(gen)
            else:
                answer = self.world.answer(effect)
                if isinstance(effect, fx.FinishRun):
                    assert self.running.pop(effect.session_id) == run_id
                new_effect = gen.send(answer)
        except StopIteration as stop:
            self.outcomes[run_id] = stop.value
            del self.gens[run_id], self.pending[run_id]
            return
        if isinstance(new_effect, fx.RunTarget):
            session_id = new_effect.session_ref.session_id
            assert session_id is not None
            # one run per session at a time
            assert session_id not in self.running, (session_id, self.running, run_id)
            self.running[session_id] = run_id
            self.run_order.append(run_id)
            self.target_sessions[run_id] = session_id
        self.pending[run_id] = new_effect


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=6), st.booleans(), st.randoms(use_true_random=False))
def test_enqueued_messages_run_once_in_arrival_order(
    n: int, known_user: bool, rng: random.Random
) -> None:
    world = World()
    if known_user:
        turn(world, message("earlier"), "r_first")
        world.arrivals.clear()
    scheduler = Scheduler(world, rng)
    for i in range(n):
        scheduler.add(f"m{i}", message(f"m{i}", multitask=ENQUEUE))
    scheduler.run()

    assert sorted(scheduler.run_order) == sorted(f"m{i}" for i in range(n))  # each ran once
    assert scheduler.run_order == world.arrivals
    assert all(isinstance(o, TurnCompleted) for o in scheduler.outcomes.values())
    # they all landed in one session, whoever created it, and built on each other in order
    assert len(set(scheduler.target_sessions.values())) == 1
    record = world.session_of(ALICE)
    history = ["earlier"] if known_user else []
    assert inputs_of(record.state) == history + world.arrivals
    assert len(world.identities) == 1


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(MultitaskStrategy)), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.randoms(use_true_random=False),
)
def test_one_run_per_session_at_a_time(
    runs: list[tuple[MultitaskStrategy, bool]], rng: random.Random
) -> None:
    """Whatever the strategies, and whether runs fail, a session runs one turn at a time.

    (The Scheduler asserts it on every RunTarget; this test also checks the bookkeeping.)
    """
    world = World()
    fails = {f"m{i}" for i, (_, ok) in enumerate(runs) if not ok}

    def target(effect: fx.RunTarget) -> fx.TargetSucceeded | fx.TargetFailed:
        if effect.run_id in fails:
            return fx.TargetFailed("boom")
        return echo_target(effect)

    world.target = target
    bob = ChannelIdentity("telegram", "456")
    scheduler = Scheduler(world, rng)
    for i, (strategy, _) in enumerate(runs):
        identity = ALICE if i % 3 else bob  # two sessions, interleaved
        scheduler.add(f"m{i}", message(f"m{i}", identity, multitask=strategy))
    scheduler.run()

    assert scheduler.running == {}
    assert len(scheduler.run_order) == len(set(scheduler.run_order))
    for run_id, outcome in scheduler.outcomes.items():
        if run_id in scheduler.run_order:
            assert isinstance(outcome, TurnFailed if run_id in fails else TurnCompleted)
        else:
            assert outcome == TurnRefused(
                RefusalReason.SESSION_BUSY, "the session is busy with another run"
            )
    for state in world.leases.values():
        assert state.holder is None
        assert state.waiters == ()
    # each session saved exactly its successful runs, in the order they ran
    for identity in (ALICE, bob):
        if (identity.channel, identity.native_id) not in world.identities:
            continue
        record = world.session_of(identity)
        ran_here = [
            r
            for r in scheduler.run_order
            if scheduler.target_sessions[r] == record.session_id and r not in fails
        ]
        assert inputs_of(record.state) == ran_here


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["ok", "fail", "reset"]), min_size=1, max_size=14))
def test_reset_yields_a_fresh_session_and_old_ones_stay_readable(ops: list[str]) -> None:
    world = World()
    turn(world, message("first"), "r_first")
    key = world.identities[("telegram", "123")]
    history: dict[str, list[str]] = {"s_r_first": ["first"]}
    current = "s_r_first"
    for i, op in enumerate(ops):
        if op == "reset":
            alias = world.reset_session(ScopeKey(key, DIRECT), f"s_reset{i}")
            assert alias.session_id not in history
            assert alias.generation == len(history) + 1
            current = alias.session_id
            history[current] = []
            continue
        world.target = echo_target if op == "ok" else failing()
        driven = turn(world, message(f"m{i}"), f"r{i}")
        (run,) = driven.of_type(fx.RunTarget)
        assert run.session_ref.session_id == current
        assert inputs_of(run.session_state) == history[current]
        if op == "ok":
            history[current].append(f"m{i}")
        # every session, current or reset away, still holds exactly its own history
        for session_id, inputs in history.items():
            assert inputs_of(world.sessions[session_id].state) == inputs
    assert world.aliases[(key, DIRECT)].session_id == current


# --- proactive messages (Host.deliver) ----------------------------------------------------


def record(world: World, isolation_key: str, text: str, run_id: str) -> Driven:
    return drive(record_proactive_message(isolation_key, text, run_id=run_id, now=world.now), world)


def test_a_proactive_message_creates_the_direct_session_of_a_user_who_has_none() -> None:
    world = World()
    world.identities[("telegram", "123")] = "ik_alice"
    driven = record(world, "ik_alice", "Reminder: standup at 10", "msg_1")

    assert driven.kinds == [
        "LoadAlias",
        "CreateSession",
        "AcquireLease",
        "AppendAssistantMessage",
        "FinishRun",
    ]
    assert driven.of_type(fx.LoadAlias) == [fx.LoadAlias(ScopeKey("ik_alice", DIRECT))]
    assert driven.of_type(fx.AcquireLease) == [fx.AcquireLease("s_msg_1", "msg_1", ENQUEUE)]
    (append,) = driven.of_type(fx.AppendAssistantMessage)
    assert append == fx.AppendAssistantMessage(
        SessionRef("ik_alice", "s_msg_1", None), None, "Reminder: standup at 10"
    )
    assert driven.outcome == MessageRecorded(SessionRef("ik_alice", "s_msg_1", None), saved=True)
    assert world.leases["s_msg_1"].holder is None

    # the user's next message runs in that session and sees the reminder in its history
    turn(world, message("thanks"), "r1")
    session = world.session_of(ALICE)
    assert session.session_id == "s_msg_1"
    assert inputs_of(session.state) == ["assistant: Reminder: standup at 10", "thanks"]
    assert session.turns == 2


def test_a_proactive_message_is_appended_to_the_existing_history() -> None:
    world = World()
    turn(world, message("hello"), "r1")
    key = world.identities[("telegram", "123")]
    driven = record(world, key, "ping", "msg_1")

    assert driven.kinds == ["LoadAlias", "AcquireLease", "AppendAssistantMessage", "FinishRun"]
    (append,) = driven.of_type(fx.AppendAssistantMessage)
    assert append.state == {"inputs": ["hello"]}
    assert isinstance(driven.outcome, MessageRecorded) and driven.outcome.saved
    assert inputs_of(world.session_of(ALICE).state) == ["hello", "assistant: ping"]


def test_a_proactive_message_waits_for_the_run_in_progress_and_never_interrupts_it() -> None:
    world = World()
    turn(world, message("hello"), "r1")
    key = world.identities[("telegram", "123")]
    world.leases["s_r1"], _ = leases.apply(
        world.leases["s_r1"], leases.Arrive("other", ENQUEUE, world.now, world.ttl)
    )
    gen = record_proactive_message(key, "ping", run_id="msg_1", now=world.now)
    effect = next(gen)
    effect = gen.send(world.answer(effect))
    assert effect == fx.AcquireLease("s_r1", "msg_1", ENQUEUE)
    effect = gen.send(world.answer(effect))
    assert effect == fx.WaitForLease("s_r1", "msg_1", None)
    assert world.leases["s_r1"].interrupt_requested is False
    effect = gen.send(world.answer(effect))  # still busy
    assert isinstance(effect, fx.WaitForLease)

    # the other run saves its turn and releases; the message lands after it
    other = attrs.evolve(world.sessions["s_r1"], state={"inputs": ["hello", "other"]})
    world.sessions["s_r1"] = other
    world.leases["s_r1"], _ = leases.apply(world.leases["s_r1"], leases.Release("other", 1.0))
    effect = gen.send(world.answer(effect))
    assert isinstance(effect, fx.AppendAssistantMessage)
    assert effect.state == {"inputs": ["hello", "other"]}
    effect = gen.send(world.answer(effect))
    assert isinstance(effect, fx.FinishRun)
    with pytest.raises(StopIteration) as stop:
        gen.send(world.answer(effect))
    assert stop.value.value == MessageRecorded(SessionRef(key, "s_r1", None), saved=True)
    assert inputs_of(world.sessions["s_r1"].state) == ["hello", "other", "assistant: ping"]


def test_a_proactive_message_whose_lease_was_taken_over_saves_nothing() -> None:
    world = World(ttl=10.0)
    turn(world, message("hello"), "r1")
    key = world.identities[("telegram", "123")]
    gen = record_proactive_message(key, "ping", run_id="msg_1", now=world.now)
    effect = next(gen)
    while not isinstance(effect, fx.AppendAssistantMessage):
        effect = gen.send(world.answer(effect))
    # the lease lapses before the message is saved, and r2 takes the session over
    world.now += 11.0
    assert isinstance(turn(world, message("fast"), "r2").outcome, TurnCompleted)
    effect = gen.send(world.answer(effect))
    assert isinstance(effect, fx.FinishRun)
    assert effect.session is not None
    with pytest.raises(StopIteration) as stop:
        gen.send(world.answer(effect))
    assert stop.value.value == MessageRecorded(SessionRef(key, "s_r1", None), saved=False)
    assert inputs_of(world.sessions["s_r1"].state) == ["hello", "fast"]


# --- states that expire when idle (sessions rule 7) -------------------------------------


def checkpointing_target(effect: fx.RunTarget) -> fx.TargetSucceeded:
    """Like a workflow: its state is a checkpoint it can do without, unless it asked."""
    text = text_of(effect.request)
    return fx.TargetSucceeded(
        result=text,
        text=text,
        new_state={"inputs": [*inputs_of(effect.session_state), text]},
        state_expires_when_idle=not text.endswith("?"),
    )


def test_a_turn_saves_whether_its_state_expires_when_idle() -> None:
    world = World(target=checkpointing_target)
    turn(world, message("done"), "r1")
    assert world.sessions["s_r1"].state_expires_when_idle
    turn(world, message("asking?"), "r2")
    assert not world.sessions["s_r1"].state_expires_when_idle
    turn(world, message("done again"), "r3")
    assert world.sessions["s_r1"].state_expires_when_idle


def test_a_proactive_message_keeps_whether_the_state_expires() -> None:
    world = World(target=checkpointing_target)
    turn(world, message("done"), "r1")
    key = world.identities[("telegram", "123")]
    record(world, key, "ping", "msg_1")
    assert world.sessions["s_r1"].state_expires_when_idle
    turn(world, message("asking?"), "r2")
    record(world, key, "ping", "msg_2")
    assert not world.sessions["s_r1"].state_expires_when_idle
