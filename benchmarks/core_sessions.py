"""Core decisions per second for session resolution, with no event loop and no I/O.

``run_turn`` generators are driven to completion by :class:`DictWorld`, a few dicts that
answer each effect the way a store would, calling the same pure functions (``leases``,
``opening.decide``) a store calls inside its transaction. The target answers at once. So
the numbers are the cost of the core's decisions plus dict look-ups: an upper bound no
backend can beat, and a baseline to spot a core change that makes every request slower.

Two things around the turns are not counted, as in a served host: building each
``ChannelRequest`` (a channel codec's work, which the HTTP rows measure; done before the
turns are timed) and collecting the garbage of start-up. The turn rows run with the
collector a served host has (``serving.prepare_collector``, applied once the world is
seeded, as ``agenthost serve`` applies it once the app is built); the world keeps growing
during the new-identity rows, as a memory store would, and its collections are counted.
"""

from __future__ import annotations

from typing import Any

from agenthost.sansio_core import effects as fx
from agenthost.sansio_core import leases, opening, sessions, turns
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ConversationScope,
    HostMessage,
    SessionMode,
)
from benchmarks.report import Row
from benchmarks.timing import serving_collector, time_calls, time_prepared_calls

BUDGET_SECONDS = 0.75  # per row; four rows
RETURNING_USERS = 1_000
LEASE_TTL = 30.0
SETTINGS = turns.TurnSettings(lease_seconds=LEASE_TTL)
INPUT = (HostMessage.user("hello"),)


class DictWorld:
    """Answers the effects of ``turns.run_turn`` from dicts, as a store and a target would."""

    def __init__(self) -> None:
        self.identities: dict[tuple[str, str], str] = {}
        self.aliases: dict[tuple[str, str], sessions.SessionAlias] = {}
        self.sessions: dict[str, sessions.SessionRecord] = {}
        self.leases: dict[str, leases.LeaseState] = {}
        self.effects = 0
        self.now = 0.0
        # Looked up by the effect's type, as an interpreter does, rather than by a chain of
        # isinstance checks: the world's own cost is not what these rows measure.
        self._answers: dict[type, Any] = {
            fx.LoadContext: self._load_context,
            fx.OpenTurn: self._open_turn,
            fx.IssueIsolationKey: self._issue_isolation_key,
            fx.LoadAlias: self._load_alias,
            fx.CreateSession: self._create_session,
            fx.AcquireLease: self._acquire_lease,
            fx.WaitForLease: self._wait_for_lease,
            fx.RunTarget: self._run_target,
            fx.FinishRun: self._finish_run,
        }

    def drive(self, request: ChannelRequest, run_id: str) -> turns.TurnOutcome:
        """Run one turn to completion and return its outcome."""
        self.now += 1.0
        turn = turns.run_turn(request, run_id=run_id, now=self.now, settings=SETTINGS)
        answers = self._answers
        answer: Any = None
        try:
            while True:
                effect = turn.send(answer)
                self.effects += 1
                answer = answers[type(effect)](effect)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]
        except KeyError as unknown:  # pragma: no cover - a core that asks something new
            raise NotImplementedError(f"this benchmark does not answer {unknown}") from None

    def _load_context(self, effect: fx.LoadContext) -> fx.RequestContext:
        key = self.identities.get((effect.identity.channel, effect.identity.native_id))
        alias = None
        if key is not None and effect.scope is not None:
            owned = effect.scope.owned_by(key)
            alias = self.aliases.get((owned.owner or key, owned.qualifier))
        return fx.RequestContext(key, alias)

    def _issue_isolation_key(self, effect: fx.IssueIsolationKey) -> str:
        identity = (effect.identity.channel, effect.identity.native_id)
        return self.identities.setdefault(identity, effect.candidate)

    def _load_alias(self, effect: fx.LoadAlias) -> sessions.SessionAlias | None:
        return self.aliases.get((effect.scope.owner or "", effect.scope.qualifier))

    def _create_session(self, effect: fx.CreateSession) -> sessions.SessionAlias:
        alias = self.aliases.setdefault((effect.alias.owner, effect.alias.qualifier), effect.alias)
        if alias is effect.alias:
            self.sessions[alias.session_id] = sessions.new_session_record(alias, self.now)
        return alias

    def _acquire_lease(self, effect: fx.AcquireLease) -> fx.LeaseAnswer:
        arrive = leases.Arrive(effect.run_id, effect.strategy, self.now, LEASE_TTL)
        return self._lease_step(effect.session_id, arrive)

    def _wait_for_lease(self, effect: fx.WaitForLease) -> fx.LeaseAnswer:
        return self._lease_step(effect.session_id, leases.Poll(effect.run_id, self.now, LEASE_TTL))

    def _run_target(self, effect: fx.RunTarget) -> fx.TargetSucceeded:
        turns_so_far = (effect.session_state or {}).get("turns", 0)
        return fx.TargetSucceeded("ok", "ok", {"turns": turns_so_far + 1})

    def _finish_run(self, effect: fx.FinishRun) -> bool:
        state = self.leases[effect.session_id]
        state, decision = leases.release(state, effect.run_id, self.now)
        self.leases[effect.session_id] = state
        if not isinstance(decision, leases.Released) or effect.session is None:
            return False
        self.sessions[effect.session_id] = effect.session
        return True

    def _open_turn(self, effect: fx.OpenTurn) -> opening.Outcome:
        """What a store does for ``OpenTurn``: load, ``opening.decide``, write."""
        plan = effect.opening
        native = (plan.identity.channel, plan.identity.native_id)
        key = self.identities.get(native)
        alias = None
        if plan.scope is not None and (plan.scope.owner or key) is not None:
            alias = self.aliases.get((plan.scope.owner or key or "", plan.scope.qualifier))
        lease = self.leases.get(alias.session_id) if alias is not None else None
        session = self.sessions.get(alias.session_id) if alias is not None else None
        outcome, writes = opening.decide(plan, opening.Loaded(key, alias, None, lease, session))
        if writes.issue_key is not None:
            self.identities[native] = writes.issue_key
        if writes.create is not None:
            created, record = writes.create
            self.aliases[(created.owner, created.qualifier)] = created
            self.sessions[created.session_id] = record
        if writes.lease is not None:
            self.leases[writes.lease.session_id] = writes.lease
        return outcome

    def _lease_step(self, session_id: str, event: leases.LeaseEvent) -> fx.LeaseAnswer:
        state = self.leases.get(session_id) or leases.initial_state(session_id)
        state, decision = leases.apply(state, event)
        self.leases[session_id] = state
        granted = isinstance(decision, leases.Granted)
        return fx.LeaseAnswer(decision, self.sessions.get(session_id) if granted else None)


def direct_message(native_id: str) -> ChannelRequest:
    """A 1:1 message on a host-tracked channel."""
    return ChannelRequest("telegram", ChannelIdentity("telegram", native_id), INPUT)


def group_message(native_id: str, conversation: str) -> ChannelRequest:
    """A message in a group chat, one session per user per conversation (the default)."""
    return ChannelRequest(
        "telegram",
        ChannelIdentity("telegram", native_id),
        INPUT,
        session=ChannelSession(conversation_id=conversation, is_direct=False),
    )


def seeded_world() -> DictWorld:
    """A world where the returning users have been seen once, in a DM and in a group."""
    world = DictWorld()
    for n in range(RETURNING_USERS):
        world.drive(direct_message(f"user-{n}"), run_id=f"seed-dm-{n}")
        world.drive(group_message(f"user-{n}", f"group-{n % 10}"), run_id=f"seed-group-{n}")
    return world


def returning_request(i: int) -> ChannelRequest:
    native_id = f"user-{i % RETURNING_USERS}"
    if i % 3 == 2:
        return group_message(native_id, f"group-{i % RETURNING_USERS % 10}")
    return direct_message(native_id)


def _turn_row(name: str, request_for: Any, world: DictWorld) -> Row:
    effects_before = world.effects

    def prepare(i: int) -> tuple[ChannelRequest, str]:
        return request_for(i), f"{name}-{i}"

    def one_turn(prepared: tuple[ChannelRequest, str]) -> None:
        request, run_id = prepared
        outcome = world.drive(request, run_id=run_id)
        if not isinstance(outcome, turns.TurnCompleted):  # pragma: no cover - a broken core
            raise AssertionError(f"turn {run_id} of {name!r} did not complete: {outcome!r}")

    row = time_prepared_calls(f"core run_turn: {name}", prepare, one_turn, budget=BUDGET_SECONDS)
    effects = (world.effects - effects_before) / row.operations
    return Row(row.name, row.operations, row.seconds, {**row.extra, "effects/op": f"{effects:.2f}"})


def _scope_and_resolve_row() -> Row:
    """``scope_for`` + ``resolve`` alone, over a mix of request shapes, half with an alias."""
    requests = [
        direct_message("user-1"),
        group_message("user-1", "group-1"),
        ChannelRequest(
            "responses",
            ChannelIdentity("responses", "caller-1"),
            INPUT,
            session=ChannelSession(key="resp_1", caller_keyed=True),
        ),
        ChannelRequest(
            "telegram",
            ChannelIdentity("telegram", "user-1"),
            INPUT,
            session=ChannelSession(conversation_id="group-1", is_direct=False),
            conversation_scope=ConversationScope.PER_CONVERSATION,
        ),
        ChannelRequest(
            "telegram",
            ChannelIdentity("telegram", "user-1"),
            INPUT,
            session_mode=SessionMode.REQUIRED,
        ),
    ]
    found = sessions.SessionAlias("ik_1", sessions.DIRECT, "s_1", generation=1, created_at=0.0)

    def decide(i: int) -> None:
        request = requests[i % len(requests)]
        scope, _key = sessions.scope_for(request, fresh_key=f"k{i}")
        if scope is not None:
            scope = scope.owned_by("ik_1")
        sessions.resolve(
            request.session_mode,
            scope,
            found if i % 2 else None,
            new_session_id=f"s{i}",
            now=float(i),
        )

    return time_calls("core scope_for + resolve", decide, budget=BUDGET_SECONDS)


def run() -> list[Row]:
    world = seeded_world()
    with serving_collector():
        turn_rows = [
            _turn_row("new identities", lambda i: direct_message(f"new-{i}"), world),
            _turn_row("returning identities", returning_request, world),
            _turn_row(
                "mixed, 1 new : 3 returning",
                lambda i: direct_message(f"mixed-new-{i}") if i % 4 == 0 else returning_request(i),
                world,
            ),
        ]
    return [*turn_rows, _scope_and_resolve_row()]
