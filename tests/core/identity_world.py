"""A dict-backed backend for driving the core's turn and command generators in tests.

``IdentityWorld`` answers every effect the way a store and the host's linkers would: it
calls the same pure functions (``leases.apply``, ``linking.plan_merge``,
``link_codes.decide_attempt`` ...) a store calls inside its transaction, on plain dicts.
No event loop, no store, no randomness it does not own (codes come from a seeded RNG).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Mapping
from typing import Any

import attrs

from agenthost.sansio_core import effects as fx
from agenthost.sansio_core import leases, link_codes, linking, opening, sessions
from agenthost.sansio_core.authorization import AccessSettings, Allowlist, ChannelAccess
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.commands import LINK_COMMANDS, CommandCatalog
from agenthost.sansio_core.link_codes import AttemptCounter, CodeChallenge, CodeLimits
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.linking import (
    LinkChallenge,
    LinkRecord,
    LinkResult,
    UserFacts,
    UserRecord,
)
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import DIRECT, SessionAlias, SessionRecord
from agenthost.sansio_core.turns import TurnSettings, run_turn
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    HostMessage,
)
from tests.core.opening_world import open_in_dicts

Native = tuple[str, str]
Claim = tuple[str, str]


def native(identity: ChannelIdentity) -> Native:
    return (identity.channel, identity.native_id)


def text_of(request: ChannelRequest) -> str:
    return "".join(m.text for m in request.input) if isinstance(request.input, tuple) else ""


def remembering_target(effect: fx.RunTarget) -> fx.TargetSucceeded:
    """Keeps every input it saw in the session state."""
    seen = list((effect.session_state or {}).get("inputs", []))
    text = text_of(effect.request)
    return fx.TargetSucceeded({"echo": text}, f"echo {text}", {"inputs": [*seen, text]})


def message(
    text: str,
    identity: ChannelIdentity,
    *,
    group: str | None = None,
) -> ChannelRequest:
    """A message on a host-tracked channel: direct, or in ``group``."""
    return ChannelRequest(
        channel=identity.channel,
        identity=identity,
        input=(HostMessage.user(text),),
        session=ChannelSession(conversation_id=group, is_direct=group is None),
    )


def settings_for(
    allowlist: Allowlist | None = None,
    *,
    require_link: bool = False,
    can_link: bool = True,
    claims_available: bool = False,
    channels: Mapping[str, ChannelAccess] | None = None,
    commands: bool = True,
) -> TurnSettings:
    default = ChannelAccess(allowlist, require_link, can_link, claims_available)
    return TurnSettings(
        access=AccessSettings(default, channels or {}),
        commands=CommandCatalog(LINK_COMMANDS if commands else ()),
    )


@attrs.define
class Driven:
    outcome: Any
    effects: list[fx.Effect]

    def of_type(self, kind: type) -> list[Any]:
        return [effect for effect in self.effects if isinstance(effect, kind)]

    @property
    def kinds(self) -> list[str]:
        return [type(effect).__name__ for effect in self.effects]


@attrs.define
class IdentityWorld:
    rules: LinkRules = attrs.field(factory=LinkRules)
    limits: CodeLimits = attrs.field(factory=CodeLimits)
    now: float = 1000.0
    seed: int = 0
    target: Callable[[fx.RunTarget], fx.TargetSucceeded | fx.TargetFailed] = remembering_target
    identities: dict[Native, str] = attrs.field(factory=dict)
    claims: dict[Native, dict[Claim, str]] = attrs.field(factory=dict)
    links: dict[Native, LinkRecord] = attrs.field(factory=dict)
    challenges: dict[str, CodeChallenge] = attrs.field(factory=dict)
    counters: dict[str, AttemptCounter] = attrs.field(factory=dict)
    aliases: dict[tuple[str, str], SessionAlias] = attrs.field(factory=dict)
    sessions: dict[str, SessionRecord] = attrs.field(factory=dict)
    leases: dict[str, leases.LeaseState] = attrs.field(factory=dict)
    codes: list[str] = attrs.field(factory=list)  # every code shown, in order
    seen: list[tuple[str, LastSeen]] = attrs.field(factory=list)  # last-seen writes
    targets: list[fx.RunTarget] = attrs.field(factory=list)
    recorded_runs: dict[str, RunRecord] = attrs.field(factory=dict)  # background runs
    _rng: random.Random = attrs.field(init=False)
    _runs: int = 0

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # --- driving ------------------------------------------------------------------

    def drive(self, gen: Generator[fx.Effect, Any, Any], *, max_steps: int = 60) -> Driven:
        seen: list[fx.Effect] = []
        try:
            effect = next(gen)
            for _ in range(max_steps):
                seen.append(effect)
                effect = gen.send(self.answer(effect))
        except StopIteration as stop:
            return Driven(stop.value, seen)
        raise AssertionError(f"the generator did not finish in {max_steps} steps")

    def turn(
        self, request: ChannelRequest, settings: TurnSettings, *, bot_name: str | None = None
    ) -> Driven:
        self._runs += 1
        return self.drive(
            run_turn(
                request,
                run_id=f"r{self._runs}",
                now=self.now,
                settings=settings,
                bot_name=bot_name,
            )
        )

    # --- what the world holds -----------------------------------------------------

    def key_of(self, identity: ChannelIdentity) -> str | None:
        return self.identities.get(native(identity))

    def user(self, identity: ChannelIdentity) -> UserRecord:
        key = self.key_of(identity)
        if key is None:
            return UserRecord(None, ())
        members = sorted(n for n, k in self.identities.items() if k == key)
        return UserRecord(key, tuple(ChannelIdentity(*n) for n in members))

    def facts(self, identity: ChannelIdentity) -> UserFacts | None:
        user = self.user(identity)
        if user.isolation_key is None:
            return None
        others = tuple(i for i in user.identities if i != identity)
        held = {claim for i in user.identities for claim in self.claims.get(native(i), {})}
        return UserFacts(others, held)

    def direct_session(self, identity: ChannelIdentity) -> SessionRecord | None:
        key = self.key_of(identity)
        alias = self.aliases.get((key, DIRECT)) if key is not None else None
        return self.sessions.get(alias.session_id) if alias is not None else None

    # --- what a store does inside its transactions ------------------------------------

    def apply_merge(self, merge: linking.Merge) -> None:
        for identity in merge.moved:
            self.identities[native(identity)] = merge.to_key
        for record in merge.records:
            self.links[native(record.identity)] = record

    def link(self, anchor: ChannelIdentity, moving: ChannelIdentity) -> LinkResult:
        anchor_user = self.user(anchor)
        if anchor_user.isolation_key is None:
            return LinkResult(False, self.key_of(moving), linking.LinkReason.NOT_LINKED)
        plan = linking.plan_merge(
            anchor, anchor_user, moving, self.user(moving), self.rules, source="test", now=self.now
        )
        if isinstance(plan, LinkResult):
            return plan
        self.apply_merge(plan)
        return LinkResult(True, plan.to_key, linking.LinkReason.LINKED)

    def unlink(self, identity: ChannelIdentity, new_key: str) -> LinkResult:
        plan = linking.plan_unlink(
            identity,
            self.user(identity),
            has_claims=bool(self.claims.get(native(identity))),
            new_key=new_key,
        )
        if isinstance(plan, LinkResult):
            return plan
        self.identities[native(identity)] = plan.to_key
        self.claims.pop(native(identity), None)
        self.links.pop(native(identity), None)
        return LinkResult(False, plan.to_key, linking.LinkReason.UNLINKED)

    def present_claims(
        self, identity: ChannelIdentity, claims: Mapping[str, str], *, source: str = "entra"
    ) -> LinkResult:
        verified = linking.verified_claims(
            claims, source=source, subject_claims=("tid", "oid"), now=self.now
        )
        self.identities.setdefault(native(identity), f"ik_claims_{len(self.identities)}")
        subject = (linking.SUBJECT_CLAIM, verified.subject)
        holders = [
            (ChannelIdentity(*n), self.user(ChannelIdentity(*n)))
            for n, held in sorted(self.claims.items())
            if subject in held
        ]
        decision = linking.plan_claims_link(
            identity,
            self.user(identity),
            holders,
            self.rules,
            source=linking.claims_source(source),
            now=self.now,
        )
        if decision.merge is not None:
            self.apply_merge(decision.merge)
        if decision.record:
            held = {c: s for c, s in self.claims.get(native(identity), {}).items() if s != source}
            held.update({claim: source for claim in verified.rows()})
            self.claims[native(identity)] = held
        return decision.result

    def begin_code(self, identity: ChannelIdentity) -> LinkChallenge:
        while True:
            issued = link_codes.issue(
                issuer=identity,
                challenge_id=f"lc{len(self.codes)}",
                entropy=self._rng.randbytes(link_codes.ENTROPY_BYTES),
                salt=self._rng.randbytes(link_codes.SALT_BYTES),
                now=self.now,
                limits=self.limits,
            )
            taken = self.challenges.get(issued.challenge.locator)
            if taken is None or taken.issuer == identity:
                break
        for locator, challenge in list(self.challenges.items()):
            if challenge.issuer == identity:
                del self.challenges[locator]
        self.challenges[issued.challenge.locator] = issued.challenge
        self.codes.append(issued.code)
        return LinkChallenge(
            issued.challenge.challenge_id,
            "code",
            link_codes.instructions(issued.code, self.limits),
            issued.challenge.expires_at,
        )

    def complete_code(self, identity: ChannelIdentity, locator: str, secret: str) -> LinkResult:
        challenge = self.challenges.get(locator)
        ident_scope = link_codes.identity_scope(identity)
        outcome = link_codes.decide_attempt(
            challenge=challenge,
            identity_counter=self.counters.get(ident_scope, AttemptCounter(ident_scope)),
            global_counter=self.counters.get(
                link_codes.GLOBAL_SCOPE, AttemptCounter(link_codes.GLOBAL_SCOPE)
            ),
            completer=identity,
            secret=secret,
            now=self.now,
            limits=self.limits,
            completer_user=self.user(identity),
            issuer_user=self.user(challenge.issuer) if challenge is not None else None,
            rules=self.rules,
        )
        if outcome.challenge is not None:
            self.challenges[locator] = outcome.challenge
        self.counters[outcome.identity_counter.scope] = outcome.identity_counter
        self.counters[outcome.global_counter.scope] = outcome.global_counter
        if outcome.merge is not None:
            self.apply_merge(outcome.merge)
        return outcome.result

    # --- the effects --------------------------------------------------------------

    def answer(self, effect: fx.Effect) -> Any:
        if isinstance(effect, fx.LoadContext):
            key = self.key_of(effect.identity)
            alias = None
            if key is not None and effect.scope is not None:
                owned = effect.scope.owned_by(key)
                alias = self.aliases.get((owned.owner or key, owned.qualifier))
            facts = self.facts(effect.identity) if effect.facts and key is not None else None
            return fx.RequestContext(key, alias, facts)
        if isinstance(effect, fx.OpenTurn):
            return self.open_turn(attrs.evolve(effect.opening, lease_seconds=1e9))
        if isinstance(effect, fx.IssueIsolationKey):
            return self.identities.setdefault(native(effect.identity), effect.candidate)
        if isinstance(effect, fx.RecordLastSeen):
            self.seen.append((effect.isolation_key, effect.seen))
            return None
        if isinstance(effect, fx.LoadAlias):
            assert effect.scope.owner is not None
            return self.aliases.get((effect.scope.owner, effect.scope.qualifier))
        if isinstance(effect, fx.CreateSession):
            alias = effect.alias
            winner = self.aliases.setdefault((alias.owner, alias.qualifier), alias)
            if winner is alias:
                self.sessions[alias.session_id] = sessions.new_session_record(alias, effect.now)
            return winner
        if isinstance(effect, fx.ForkSession):
            alias = effect.alias
            winner = self.aliases.setdefault((alias.owner, alias.qualifier), alias)
            if winner is alias:
                source = self.sessions.get(effect.source_session_id)
                self.sessions[alias.session_id] = sessions.forked_record(source, alias, effect.now)
            return winner
        if isinstance(effect, fx.RotateSession):
            scope = effect.scope
            assert scope.owner is not None
            current = self.aliases.get((scope.owner, scope.qualifier))
            alias = sessions.rotate(
                scope, current, new_session_id=effect.new_session_id, now=effect.now
            )
            self.aliases[(alias.owner, alias.qualifier)] = alias
            self.sessions[alias.session_id] = sessions.new_session_record(alias, effect.now)
            return alias
        if isinstance(effect, fx.AcquireLease):
            event = leases.Arrive(effect.run_id, effect.strategy, self.now, 1e9)
            return self._lease_step(effect.session_id, event)
        if isinstance(effect, fx.WaitForLease):
            return self._lease_step(effect.session_id, leases.Poll(effect.run_id, self.now, 1e9))
        if isinstance(effect, fx.RunTarget):
            self.targets.append(effect)
            return self.target(effect)
        if isinstance(effect, fx.FinishRun) and effect.creation is not None:
            # What a store does for a session the opening left to the save (rule 5).
            creation = effect.creation
            alias = creation.alias
            if (alias.owner, alias.qualifier) in self.aliases:
                return False
            self.aliases[(alias.owner, alias.qualifier)] = alias
            self.sessions[alias.session_id] = effect.session or creation.record
            self.leases[alias.session_id], _ = leases.apply(
                creation.lease, leases.Release(effect.run_id, self.now)
            )
            return effect.session is not None
        if isinstance(effect, fx.FinishRun):
            state = self.leases[effect.session_id]
            saved = state.holder == effect.run_id and effect.session is not None
            if saved and effect.session is not None:
                self.sessions[effect.session_id] = effect.session
            self.leases[effect.session_id], _ = leases.apply(
                state, leases.Release(effect.run_id, self.now)
            )
            return saved
        if isinstance(effect, fx.BeginLink):
            return (self.begin_code(effect.identity),)
        if isinstance(effect, fx.CompleteLink):
            return self.complete_code(effect.identity, effect.challenge_id, effect.proof)
        if isinstance(effect, fx.UnlinkIdentity):
            return self.unlink(effect.identity, effect.new_key)
        raise AssertionError(f"the identity world does not answer {effect!r}")

    def open_turn(self, plan: opening.Opening) -> opening.Outcome:
        return open_in_dicts(
            plan,
            identities=self.identities,
            aliases=self.aliases,
            sessions=self.sessions,
            lease_states=self.leases,
            facts_of=self.facts,
            seen=self.seen,
            runs=self.recorded_runs,
        )

    def _lease_step(self, session_id: str, event: leases.LeaseEvent) -> fx.LeaseAnswer:
        state = self.leases.get(session_id, leases.initial_state(session_id))
        self.leases[session_id], decision = leases.apply(state, event)
        granted = isinstance(decision, leases.Granted)
        return fx.LeaseAnswer(decision, self.sessions.get(session_id) if granted else None)
