"""The in-memory store: the contract's reference implementation, for tests.

It keeps every record in dicts guarded by one lock; nothing survives the process.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence

import attrs

from agenthost.sansio_core import (
    background,
    delivery,
    leases,
    link_codes,
    linking,
    opening,
    sessions,
)
from agenthost.sansio_core.background import RunEvent, RunRecord
from agenthost.sansio_core.delivery import Delivery, DeliveryEvent, DeliveryStatus
from agenthost.sansio_core.effects import LeaseAnswer, RequestContext
from agenthost.sansio_core.link_codes import AttemptCounter, CodeChallenge, CodeLimits
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.linking import (
    LinkReason,
    LinkRecord,
    LinkResult,
    Merge,
    UserFacts,
    UserRecord,
    VerifiedClaims,
)
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import ChannelIdentity, RunStatus
from agenthost.stores.base import (
    ChannelRecord,
    DeliveryNotFound,
    DeliveryStepAnswer,
    FinishedTurn,
    RunNotFound,
    Store,
    TurnWrites,
    apply_delivery_steps,
    run_refusal_reason,
)

Native = tuple[str, str]  # (channel, native_id)
Claim = tuple[str, str]  # (claim_type, claim_value)


class MemoryStore(Store):
    def __init__(self) -> None:
        # A threading lock, not an anyio one: every method is short and never awaits while
        # holding it, and tests may touch the store from worker threads.
        self._lock = threading.Lock()
        self._identities: dict[tuple[str, str], str] = {}
        self._aliases: dict[tuple[str, str], SessionAlias] = {}
        self._sessions: dict[str, SessionRecord] = {}
        self._leases: dict[str, leases.LeaseState] = {}
        self._runs: dict[str, RunRecord] = {}
        # Channel records by (channel, kind): key -> record, the same keys in a list sorted
        # when read (for ranges and pages), and the expiry of each record that has one.
        self._records: dict[tuple[str, str], dict[str, ChannelRecord]] = {}
        self._record_keys: dict[tuple[str, str], list[str]] = {}
        # Groups whose key list had keys appended since it was last sorted: a write appends
        # (an insort moves half the list on every write; a turn writes several records and
        # few are ever listed), the next read sorts.
        self._unsorted: set[tuple[str, str]] = set()
        self._expiring: dict[tuple[str, str, str], float] = {}
        # Linking: the members of each key (in arrival order), claims per identity and the
        # identities holding each claim, link records, code challenges and counters.
        self._members: dict[str, dict[Native, None]] = {}
        self._claims: dict[Native, dict[Claim, str]] = {}  # -> the source that verified it
        self._holders: dict[Claim, dict[Native, None]] = {}
        self._links: dict[Native, LinkRecord] = {}
        self._challenges: dict[str, CodeChallenge] = {}  # by locator
        self._challenge_of: dict[Native, str] = {}  # issuer -> locator
        self._counters: dict[str, AttemptCounter] = {}
        # (channel, native_id, conversation) -> (the key it was recorded under, the record)
        self._last_seen: dict[tuple[str, str, str], tuple[str, LastSeen]] = {}
        self._deliveries: dict[str, Delivery] = {}

    async def load_context(
        self, identity: ChannelIdentity, scope: ScopeKey | None, *, facts: bool = False
    ) -> RequestContext:
        with self._lock:
            key = self._identities.get(_native(identity))
            alias = None
            if key is not None and scope is not None:
                owned = scope.owned_by(key)
                alias = self._aliases.get((owned.owner or key, owned.qualifier))
            loaded = self._facts(identity, key) if facts and key is not None else None
            return RequestContext(key, alias, loaded)

    async def issue_isolation_key(
        self, identity: ChannelIdentity, candidate: str, now: float
    ) -> str:
        with self._lock:
            key = self._identities.get(_native(identity))
            if key is None:
                key = candidate
                self._set_key(_native(identity), key)
            return key

    # --- links and verified claims ---------------------------------------------------

    async def load_facts(self, identity: ChannelIdentity) -> UserFacts | None:
        with self._lock:
            key = self._identities.get(_native(identity))
            return self._facts(identity, key) if key is not None else None

    async def list_identities(self, isolation_key: str) -> list[ChannelIdentity]:
        with self._lock:
            return [
                ChannelIdentity(*native) for native in sorted(self._members.get(isolation_key, {}))
            ]

    async def list_links(self, isolation_key: str) -> list[LinkRecord]:
        with self._lock:
            found = [r for r in self._links.values() if r.isolation_key == isolation_key]
        return sorted(found, key=lambda r: (r.created_at, r.identity.channel, r.identity.native_id))

    async def link_identities(
        self,
        anchor: ChannelIdentity,
        moving: ChannelIdentity,
        rules: LinkRules,
        *,
        source: str,
        now: float,
    ) -> LinkResult:
        with self._lock:
            anchor_user = self._user(anchor)
            moving_user = self._user(moving)
            if anchor_user.isolation_key is None:
                return LinkResult(False, moving_user.isolation_key, LinkReason.NOT_LINKED)
            plan = linking.plan_merge(
                anchor, anchor_user, moving, moving_user, rules, source=source, now=now
            )
            if isinstance(plan, LinkResult):
                return plan
            self._apply_merge(plan)
            return LinkResult(True, plan.to_key, LinkReason.LINKED)

    async def unlink_identity(
        self, identity: ChannelIdentity, new_key: str, now: float
    ) -> LinkResult:
        with self._lock:
            native = _native(identity)
            plan = linking.plan_unlink(
                identity,
                self._user(identity),
                has_claims=bool(self._claims.get(native)),
                new_key=new_key,
            )
            if isinstance(plan, LinkResult):
                return plan
            self._set_key(native, plan.to_key)
            self._forget_claims(native, source=None)
            self._links.pop(native, None)
            return LinkResult(False, plan.to_key, LinkReason.UNLINKED)

    async def link_verified_claims(
        self,
        identity: ChannelIdentity,
        claims: VerifiedClaims,
        rules: LinkRules,
        *,
        candidate_key: str,
        now: float,
    ) -> LinkResult:
        with self._lock:
            native = _native(identity)
            if native not in self._identities:
                self._set_key(native, candidate_key)
            subject = (linking.SUBJECT_CLAIM, claims.subject)
            holders = [
                (ChannelIdentity(*holder), self._user(ChannelIdentity(*holder)))
                for holder in self._holders.get(subject, {})
            ]
            decision = linking.plan_claims_link(
                identity,
                self._user(identity),
                holders,
                rules,
                source=linking.claims_source(claims.source),
                now=now,
            )
            if decision.merge is not None:
                self._apply_merge(decision.merge)
            if decision.record:
                self._forget_claims(native, source=claims.source)
                for claim in claims.rows():
                    self._claims.setdefault(native, {})[claim] = claims.source
                    self._holders.setdefault(claim, {})[native] = None
            return decision.result

    # --- one-time link codes ---------------------------------------------------------

    async def put_link_challenge(self, challenge: CodeChallenge) -> bool:
        with self._lock:
            issuer = _native(challenge.issuer)
            taken = self._challenges.get(challenge.locator)
            if taken is not None and _native(taken.issuer) != issuer:
                return False
            previous = self._challenge_of.pop(issuer, None)
            if previous is not None:
                self._challenges.pop(previous, None)
            self._challenges[challenge.locator] = challenge
            self._challenge_of[issuer] = challenge.locator
            return True

    async def get_link_challenge(self, locator: str) -> CodeChallenge | None:
        with self._lock:
            return self._challenges.get(locator)

    async def attempt_link_code(
        self,
        completer: ChannelIdentity,
        locator: str,
        secret: str,
        *,
        now: float,
        limits: CodeLimits,
        rules: LinkRules,
    ) -> LinkResult:
        with self._lock:
            challenge = self._challenges.get(locator)
            identity_scope = link_codes.identity_scope(completer)
            outcome = link_codes.decide_attempt(
                challenge=challenge,
                identity_counter=self._counter(identity_scope),
                global_counter=self._counter(link_codes.GLOBAL_SCOPE),
                completer=completer,
                secret=secret,
                now=now,
                limits=limits,
                completer_user=self._user(completer),
                issuer_user=self._user(challenge.issuer) if challenge is not None else None,
                rules=rules,
            )
            if outcome.challenge is not None:
                self._challenges[locator] = outcome.challenge
            for counter in (outcome.identity_counter, outcome.global_counter):
                if counter == AttemptCounter(counter.scope):
                    self._counters.pop(counter.scope, None)  # nothing to remember
                else:
                    self._counters[counter.scope] = counter
            if outcome.merge is not None:
                self._apply_merge(outcome.merge)
            return outcome.result

    async def get_attempt_counter(self, scope: str) -> AttemptCounter:
        with self._lock:
            return self._counter(scope)

    async def delete_expired_link_records(self, now: float) -> int:
        with self._lock:
            doomed = [
                challenge
                for challenge in self._challenges.values()
                if link_codes.is_expired(challenge, now)
            ]
            for challenge in doomed:
                del self._challenges[challenge.locator]
                issuer = _native(challenge.issuer)
                if self._challenge_of.get(issuer) == challenge.locator:
                    del self._challenge_of[issuer]
            idle = [
                scope
                for scope, counter in self._counters.items()
                if link_codes.counter_is_expired(counter, now)
            ]
            for scope in idle:
                del self._counters[scope]
            return len(doomed) + len(idle)

    # --- linking internals (called with the lock held) ------------------------------

    def _set_key(self, native: Native, key: str) -> None:
        old = self._identities.get(native)
        if old is not None:
            members = self._members.get(old, {})
            members.pop(native, None)
            if not members:
                self._members.pop(old, None)
        self._identities[native] = key
        self._members.setdefault(key, {})[native] = None

    def _user(self, identity: ChannelIdentity) -> UserRecord:
        key = self._identities.get(_native(identity))
        if key is None:
            return UserRecord(None, ())
        members = sorted(self._members.get(key, {}))
        return UserRecord(key, tuple(ChannelIdentity(*native) for native in members))

    def _facts(self, identity: ChannelIdentity, key: str) -> UserFacts:
        members = sorted(self._members.get(key, {}))
        others = tuple(ChannelIdentity(*n) for n in members if n != _native(identity))
        claims = {claim for native in members for claim in self._claims.get(native, {})}
        return UserFacts(others, claims)

    def _apply_merge(self, merge: Merge) -> None:
        for identity in merge.moved:
            self._set_key(_native(identity), merge.to_key)
        for record in merge.records:
            self._links[_native(record.identity)] = record

    def _forget_claims(self, native: Native, *, source: str | None) -> None:
        held = self._claims.get(native, {})
        for claim, claim_source in list(held.items()):
            if source is None or claim_source == source:
                del held[claim]
                holders = self._holders.get(claim, {})
                holders.pop(native, None)
                if not holders:
                    self._holders.pop(claim, None)
        if not held:
            self._claims.pop(native, None)

    def _counter(self, scope: str) -> AttemptCounter:
        return self._counters.get(scope) or AttemptCounter(scope)

    async def load_alias(self, scope: ScopeKey) -> SessionAlias | None:
        with self._lock:
            return self._aliases.get(_alias_key(scope))

    async def create_session(self, alias: SessionAlias, now: float) -> SessionAlias:
        with self._lock:
            existing = self._aliases.get((alias.owner, alias.qualifier))
            if existing is not None:
                return existing
            self._aliases[(alias.owner, alias.qualifier)] = alias
            self._sessions[alias.session_id] = sessions.new_session_record(alias, now)
            return alias

    async def fork_session(
        self, source_session_id: str, alias: SessionAlias, now: float
    ) -> SessionAlias:
        with self._lock:
            existing = self._aliases.get((alias.owner, alias.qualifier))
            if existing is not None:
                return existing
            source = self._sessions.get(source_session_id)
            self._aliases[(alias.owner, alias.qualifier)] = alias
            self._sessions[alias.session_id] = sessions.forked_record(source, alias, now)
            return alias

    async def rotate_session(
        self, scope: ScopeKey, new_session_id: str, now: float
    ) -> SessionAlias:
        with self._lock:
            key = _alias_key(scope)
            alias = sessions.rotate(
                scope, self._aliases.get(key), new_session_id=new_session_id, now=now
            )
            self._aliases[key] = alias
            self._sessions[alias.session_id] = sessions.new_session_record(alias, now)
            return alias

    async def load_session(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._sessions.get(session_id)

    async def list_sessions(self, owner: str) -> list[SessionRecord]:
        with self._lock:
            found = [s for s in self._sessions.values() if s.owner == owner]
        return sorted(found, key=lambda s: (s.created_at, s.generation, s.session_id))

    async def expire_idle_states(self, now: float, ttl: float, limit: int) -> int:
        with self._lock:
            candidates = sorted(
                (
                    record
                    for record in self._sessions.values()
                    if record.state_expires_when_idle and record.updated_at <= now - ttl
                ),
                key=lambda record: record.updated_at,
            )[:limit]
            dropped = 0
            for record in candidates:
                if sessions.idle_state_expired(
                    expires_when_idle=record.state_expires_when_idle,
                    saved_at=record.updated_at,
                    lease=self._leases.get(record.session_id),
                    now=now,
                    ttl=ttl,
                ):
                    self._sessions[record.session_id] = attrs.evolve(
                        record, state=None, state_expires_when_idle=False
                    )
                    dropped += 1
            return dropped

    async def open_turn(self, plan: opening.Opening) -> opening.Outcome:
        with self._lock:
            key = self._identities.get(_native(plan.identity))
            alias = None
            if plan.scope is not None:
                owner = plan.scope.owner or key
                if owner is not None:
                    alias = self._aliases.get((owner, plan.scope.qualifier))
            facts = None
            if key is not None and plan.access.needs_facts:
                facts = self._facts(plan.identity, key)
            lease = session = None
            if alias is not None:
                lease = self._leases.get(alias.session_id)
                session = self._sessions.get(alias.session_id)
            loaded = opening.Loaded(key, alias, facts, lease, session)
            if plan.fork_scope is not None and key is not None:
                fork = self._aliases.get((key, plan.fork_scope.qualifier))
                if fork is not None:
                    loaded = attrs.evolve(
                        loaded,
                        fork_alias=fork,
                        fork_lease=self._leases.get(fork.session_id),
                        fork_session=self._sessions.get(fork.session_id),
                    )
            outcome, writes = opening.decide(plan, loaded)
            if writes.run is not None:
                self._insert_run(writes.run)  # first: a token in use leaves nothing written
            if writes.issue_key is not None:
                self._set_key(_native(plan.identity), writes.issue_key)
            if writes.last_seen is not None:
                seen_key, seen = writes.last_seen
                self._record_seen(seen_key, seen)
            if writes.create is not None:
                created, record = writes.create
                self._aliases[(created.owner, created.qualifier)] = created
                self._sessions[created.session_id] = record
            if writes.lease is not None:
                self._leases[writes.lease.session_id] = writes.lease
            return outcome

    async def apply_lease_event(self, session_id: str, event: leases.LeaseEvent) -> LeaseAnswer:
        with self._lock:
            state = self._leases.get(session_id) or leases.initial_state(session_id)
            new_state, decision = leases.apply(state, event)
            self._leases[session_id] = new_state
            session = (
                self._sessions.get(session_id) if isinstance(decision, leases.Granted) else None
            )
            return LeaseAnswer(decision, session)

    async def finish_run(
        self,
        session_id: str,
        run_id: str,
        session: SessionRecord | None,
        now: float,
        *,
        creation: opening.Creation | None = None,
    ) -> bool:
        with self._lock:
            return self._finish_run(session_id, run_id, session, now, creation)

    def _finish_run(
        self,
        session_id: str,
        run_id: str,
        session: SessionRecord | None,
        now: float,
        creation: opening.Creation | None,
    ) -> bool:
        if creation is not None:
            return self._finish_creation(creation, run_id, session, now)
        state = self._leases.get(session_id) or leases.initial_state(session_id)
        new_state, decision = leases.release(state, run_id, now)
        if not isinstance(decision, leases.Released):
            return False
        self._leases[session_id] = new_state
        if session is None:
            return False
        self._sessions[session_id] = session
        return True

    def _finish_creation(
        self, creation: opening.Creation, run_id: str, session: SessionRecord | None, now: float
    ) -> bool:
        alias = creation.alias
        if (alias.owner, alias.qualifier) in self._aliases:
            return False  # the key was not private after all: the existing session stays
        new_state, decision = leases.release(creation.lease, run_id, now)
        if not isinstance(decision, leases.Released):  # pragma: no cover - the turn holds it
            return False
        self._aliases[(alias.owner, alias.qualifier)] = alias
        self._sessions[alias.session_id] = session if session is not None else creation.record
        self._leases[alias.session_id] = new_state
        return session is not None

    async def finish_turn(
        self,
        session_id: str | None,
        run_id: str,
        session: SessionRecord | None,
        now: float,
        writes: TurnWrites,
        *,
        creation: opening.Creation | None = None,
    ) -> FinishedTurn:
        with self._lock:
            # Checked first, so a refused transition changes nothing of the run's writes.
            run, refused = None, None
            if writes.run_event is not None:
                token, event = writes.run_event
                try:
                    run = self._apply_run_event(token, event)
                except (background.RunTransitionRefused, RunNotFound) as exc:
                    refused = run_refusal_reason(exc)
            saved = False
            if session_id is not None:
                saved = self._finish_run(session_id, run_id, session, now, creation)
            if refused is None:
                self._insert_deliveries(writes.deliveries)
            for record in writes.channel_records:
                self._put_record(record)
            return FinishedTurn(saved, run, refused)

    async def create_run(self, record: RunRecord) -> None:
        with self._lock:
            self._insert_run(record)

    def _insert_run(self, record: RunRecord) -> None:
        if record.token in self._runs:
            raise ValueError(f"a run with token {record.token!r} exists")
        self._runs[record.token] = record

    async def get_run(self, token: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(token)

    async def apply_run_event(self, token: str, event: RunEvent) -> RunRecord:
        with self._lock:
            return self._apply_run_event(token, event)

    def _apply_run_event(self, token: str, event: RunEvent) -> RunRecord:
        record = self._runs.get(token)
        if record is None:
            raise RunNotFound(token)
        new = background.apply(record, event)
        self._runs[token] = new
        return new

    async def list_runs(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        wanted = set(statuses)
        with self._lock:
            found = [r for r in self._runs.values() if r.status in wanted]
        return sorted(found, key=lambda r: (r.created_at, r.token))

    async def delete_expired_runs(self, now: float) -> int:
        with self._lock:
            expired = [t for t, r in self._runs.items() if background.is_expired(r, now)]
            for token in expired:
                del self._runs[token]
            return len(expired)

    # --- last seen --------------------------------------------------------------------

    async def record_last_seen(self, isolation_key: str, seen: LastSeen) -> None:
        with self._lock:
            self._record_seen(isolation_key, seen)

    def _record_seen(self, isolation_key: str, seen: LastSeen) -> None:
        ident = (seen.channel, seen.identity.native_id, seen.conversation_id or "")
        self._last_seen[ident] = (isolation_key, seen)

    async def list_last_seen(self, isolation_key: str) -> list[LastSeen]:
        with self._lock:
            found = [
                seen
                for (channel, native, _), (key, seen) in self._last_seen.items()
                if self._identities.get((channel, native), key) == isolation_key
            ]
        return sorted(found, key=_newest_first)

    # --- the delivery outbox -----------------------------------------------------------

    async def complete_run_with_deliveries(
        self, token: str, event: RunEvent, deliveries: Sequence[Delivery]
    ) -> RunRecord:
        with self._lock:
            new = self._apply_run_event(token, event)
            self._insert_deliveries(deliveries)
            return new

    async def schedule_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            self._insert_deliveries(deliveries)

    def _insert_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._deliveries.setdefault(d.delivery_id, d)

    async def claim_due_deliveries(
        self, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        with self._lock:
            due = sorted(
                (d for d in self._deliveries.values() if d.is_due(now)),
                key=lambda d: (d.next_attempt_at, d.created_at, d.delivery_id),
            )[:limit]
            claimed = []
            for d in due:
                new = delivery.apply(d, delivery.Claim(owner, now, lease_seconds))
                self._deliveries[d.delivery_id] = new
                claimed.append(new)
            return claimed

    async def apply_delivery_event(self, delivery_id: str, event: DeliveryEvent) -> Delivery:
        with self._lock:
            d = self._deliveries.get(delivery_id)
            if d is None:
                raise DeliveryNotFound(delivery_id)
            new = delivery.apply(d, event)
            self._deliveries[delivery_id] = new
            return new

    async def apply_delivery_events(
        self, steps: Sequence[tuple[str, DeliveryEvent]]
    ) -> list[DeliveryStepAnswer]:
        with self._lock:
            named = {i: self._deliveries[i] for i, _ in steps if i in self._deliveries}
            answers, changed = apply_delivery_steps(named, steps)
            self._deliveries.update(changed)
            return answers

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            return self._deliveries.get(delivery_id)

    async def list_deliveries(
        self,
        statuses: Iterable[DeliveryStatus] | None = None,
        *,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Delivery]:
        wanted = set(statuses) if statuses is not None else set(DeliveryStatus)
        with self._lock:
            found = [d for d in self._deliveries.values() if d.status in wanted]
        order = sorted(found, key=lambda d: (d.created_at, d.delivery_id), reverse=newest_first)
        return order[:limit]

    async def next_delivery_due(self) -> float | None:
        waiting = (DeliveryStatus.SCHEDULED, DeliveryStatus.FAILED)
        with self._lock:
            times = [d.next_attempt_at for d in self._deliveries.values() if d.status in waiting]
        return min(times, default=None)

    async def purge_deliveries(
        self, statuses: Iterable[DeliveryStatus], *, updated_before: float | None = None
    ) -> int:
        wanted = set(statuses)
        with self._lock:
            doomed = [
                i
                for i, d in self._deliveries.items()
                if d.status in wanted and (updated_before is None or d.updated_at <= updated_before)
            ]
            for delivery_id in doomed:
                del self._deliveries[delivery_id]
            return len(doomed)

    # --- channel records ---------------------------------------------------------------

    async def put_channel_records(self, records: Sequence[ChannelRecord]) -> None:
        with self._lock:
            for record in records:
                self._put_record(record)

    async def insert_channel_records(
        self,
        records: Sequence[ChannelRecord],
        *,
        companions: Mapping[str, Sequence[ChannelRecord]] | None = None,
        put: Sequence[ChannelRecord] = (),
    ) -> set[str]:
        with self._lock:
            inserted: set[str] = set()
            for record in records:
                group = self._records.get((record.channel, record.kind))
                if group is None or record.key not in group:
                    self._put_record(record)
                    inserted.add(record.key)
            if companions:
                for key in inserted:
                    for companion in companions.get(key, ()):
                        self._put_record(companion)
            for record in put:
                self._put_record(record)
            return inserted

    async def get_channel_record(self, channel: str, kind: str, key: str) -> ChannelRecord | None:
        with self._lock:
            group = self._records.get((channel, kind))
            return group.get(key) if group is not None else None

    async def list_channel_records(
        self,
        channel: str,
        kind: str,
        *,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> list[ChannelRecord]:
        with self._lock:
            group = self._records.get((channel, kind))
            if group is None:
                return []
            chosen = self._listed_keys(channel, kind, prefix, after, limit, descending)
            return [group[key] for key in chosen]

    async def list_channel_record_owners(
        self, channel: str, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[tuple[str, str | None]]:
        with self._lock:
            group = self._records.get((channel, kind))
            if group is None:
                return []
            chosen = self._listed_keys(channel, kind, "", after, limit, False)
            return [(key, group[key].owner) for key in chosen]

    def _listed_keys(
        self,
        channel: str,
        kind: str,
        prefix: str,
        after: str | None,
        limit: int,
        descending: bool,
    ) -> list[str]:
        """The keys a listing answers, in its order (the caller holds the lock)."""
        if limit <= 0:
            return []
        keys = self._sorted_keys((channel, kind))
        low, high = _prefix_range(keys, prefix)
        if after is not None:
            if descending:
                high = min(high, bisect.bisect_left(keys, after, low, high))
            else:
                low = max(low, bisect.bisect_right(keys, after, low, high))
        if descending:
            return keys[max(low, high - limit) : high][::-1]
        return keys[low : min(high, low + limit)]

    async def delete_channel_records(self, channel: str, kind: str, *, prefix: str) -> int:
        with self._lock:
            group = self._records.get((channel, kind))
            if group is None:
                return 0
            keys = self._sorted_keys((channel, kind))
            low, high = _prefix_range(keys, prefix)
            doomed = keys[low:high]
            del keys[low:high]
            for key in doomed:
                del group[key]
                self._expiring.pop((channel, kind, key), None)
            if not group:
                self._forget_group((channel, kind))
            return len(doomed)

    async def delete_expired_channel_records(self, now: float) -> int:
        with self._lock:
            doomed = [ident for ident, expires_at in self._expiring.items() if expires_at <= now]
            for ident in doomed:
                self._drop_record(ident)
            return len(doomed)

    def _put_record(self, record: ChannelRecord) -> None:
        group_key = (record.channel, record.kind)
        group = self._records.setdefault(group_key, {})
        if record.key not in group:
            self._record_keys.setdefault(group_key, []).append(record.key)
            self._unsorted.add(group_key)
        group[record.key] = record
        ident = (record.channel, record.kind, record.key)
        if record.expires_at is None:
            self._expiring.pop(ident, None)
        else:
            self._expiring[ident] = record.expires_at

    def _drop_record(self, ident: tuple[str, str, str]) -> None:
        channel, kind, key = ident
        group_key = (channel, kind)
        group = self._records[group_key]
        del group[key]
        keys = self._sorted_keys(group_key)
        del keys[bisect.bisect_left(keys, key)]
        self._expiring.pop(ident, None)
        if not group:
            self._forget_group(group_key)

    def _sorted_keys(self, group_key: tuple[str, str]) -> list[str]:
        """The group's keys, sorted (the caller holds the lock)."""
        keys = self._record_keys[group_key]
        if group_key in self._unsorted:
            keys.sort()  # a sorted run and the few keys appended since: close to linear
            self._unsorted.discard(group_key)
        return keys

    def _forget_group(self, group_key: tuple[str, str]) -> None:
        del self._records[group_key]
        del self._record_keys[group_key]
        self._unsorted.discard(group_key)


def _prefix_range(keys: list[str], prefix: str) -> tuple[int, int]:
    """The slice of sorted ``keys`` that start with ``prefix``."""
    low = bisect.bisect_left(keys, prefix)
    if not prefix:
        return low, len(keys)
    return low, bisect.bisect_left(keys, prefix + "\U0010ffff", low)


def _native(identity: ChannelIdentity) -> Native:
    return (identity.channel, identity.native_id)


def _newest_first(seen: LastSeen) -> tuple[float, str, str, str]:
    return (-seen.seen_at, seen.channel, seen.identity.native_id, seen.conversation_id or "")


def _alias_key(scope: ScopeKey) -> tuple[str, str]:
    if scope.owner is None:
        raise ValueError("an alias scope needs its owner")
    return (scope.owner, scope.qualifier)
