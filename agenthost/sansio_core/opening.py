"""Opening a turn in one store round trip: who is asking, whether they may, which session,
and the session's lease, decided inside the store's transaction.

A foreground turn needs the same reads and writes every time: the identity's key (issued on
first sight), authorization over what linking established, where the user was last seen,
the session (created on first use) and its lease. Asked as separate questions that is four
to six store round trips before the target runs. Here the turn hands the store an
:class:`Opening` (what the request asks for); the store loads the :class:`Loaded` records in
its transaction, calls :func:`decide` and writes exactly the records the decision names. The
store still decides nothing: every rule is the one the step-by-step path applies, and each
comes from its own module (``authorization``, ``identity``, ``sessions``, ``leases``).

Rules:

1. The decision is the step-by-step path's, in its order: authorize (a refused identity
   leaves no trace, not even a key) -> issue the key of an identity seen for the first
   time -> record where it was seen -> resolve the session (create on first use; a
   ``required`` session that does not exist refuses) -> arrive at the lease.
2. Only requests that need no application callback between those steps open this way:
   no custom identity resolver, no run hook, no command (``turns.opens_in_one_trip``).
   The others take the step-by-step path.
3. Writes are named in the decision, never inferred by the store: a key to insert, a
   last-seen record, an alias with its new session (empty, or a fork's copy of its
   source), and the lease state.
4. A forking request (a caller-keyed turn that continues a source and saves under a new
   key, such as a Responses ``previous_response_id``) resolves its source in ``scope`` and
   creates its own session under ``fork_scope``: a copy of the source's, or an empty one
   when it names no source. Its new session's lease is fresh.
5. A session only this turn can name (``create_at_finish``: its key was minted for this
   request and nobody sees it before the reply, such as a new Responses response id) is
   not written when the turn opens: no other request can reach it, so its lease excludes
   no one. The outcome carries it as a :class:`Creation` and the write that saves the turn
   creates it (alias, record, released lease), so such a turn costs one read and one
   write. Only when the opening writes nothing else: a key to issue or a last-seen record
   must be written before the target runs, and then the session is created with them.
   A store may load and decide outside a write transaction for such a plan; when the
   decision names writes anyway (:attr:`Writes.empty` is false), it decides again in one.
6. A background request (:attr:`Opening.background`) is recorded, not run: its opening
   takes no lease (the worker arrives at the lease when it runs the turn, maybe much
   later) and names the run's record (:class:`BackgroundRun`) among the writes, with the
   key and session the same decision settled, so recording a background run is one
   write. Rule 5 does not apply to it: its session is written with the run.
"""

from __future__ import annotations

import attrs

from agenthost.sansio_core import authorization, background, identity, leases, routing, sessions
from agenthost.sansio_core.authorization import Allowed, ChannelAccess, Denied, LinkRequired
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.linking import UserFacts
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    MultitaskStrategy,
    SessionMode,
    SessionRef,
)
from agenthost.sansio_core.values import builder, builds_fast


@attrs.frozen
class BackgroundRun:
    """A background request's run, to record with its opening (rule 6): the request as it
    arrived (the run's token is the opening's ``run_id``) and how often it may be tried."""

    request: ChannelRequest
    max_attempts: int


@builds_fast
@attrs.frozen
class Opening:
    """What a request asks of the store to open its turn (the answer: :class:`Opened`)."""

    identity: ChannelIdentity
    scope: ScopeKey | None  # ``owner=None``: the identity's own key
    session_key: str | None  # the caller-facing key, for the SessionRef
    session_mode: SessionMode
    access: ChannelAccess
    is_direct: bool
    run_id: str
    strategy: MultitaskStrategy
    now: float
    last_seen: routing.LastSeen | None  # recorded when the host has a channel that can push
    lease_seconds: float = 30.0  # the host's lease time (``TurnSettings.lease_seconds``)
    fork_scope: ScopeKey | None = None  # where a forking request saves (rule 4)
    has_source_key: bool = False  # a forking request names a source to copy
    create_at_finish: bool = False  # the new session is one only this turn can name (rule 5)
    background: BackgroundRun | None = None  # record this run instead of opening it (rule 6)

    @property
    def new_session_id(self) -> str:
        return f"s_{self.run_id}"


@builds_fast
@attrs.frozen
class Loaded:
    """What the store read in its transaction for :func:`decide`.

    ``alias`` is the scope's alias under the owner the scope names or, when it names none,
    under ``isolation_key`` (``None`` for an identity never seen); ``lease`` and ``session``
    are those of ``alias``'s session (for a fork, its source: the lease is not needed).
    """

    isolation_key: str | None
    alias: SessionAlias | None
    facts: UserFacts | None
    lease: leases.LeaseState | None
    session: SessionRecord | None
    # A forking request's own alias under ``fork_scope`` when it exists already (a retried
    # request), with its lease and session: the turn then runs there, as the winner.
    fork_alias: SessionAlias | None = None
    fork_lease: leases.LeaseState | None = None
    fork_session: SessionRecord | None = None


@attrs.frozen
class Refused:
    """The turn ends before the target runs; ``access`` is set for a denial or a link
    requirement, otherwise the session was ``required`` and not found."""

    access: Denied | LinkRequired | None


@builds_fast
@attrs.frozen
class Creation:
    """A new session left for the write that saves the turn (rule 5): its alias, its empty
    record, and its lease as granted to the turn."""

    alias: SessionAlias
    record: SessionRecord
    lease: leases.LeaseState


@builds_fast
@attrs.frozen
class Opened:
    """The turn's session and its place at the lease (``lease`` is ``None`` when stateless,
    and for a background request, which takes none: ``run`` is then its recorded run)."""

    session_ref: SessionRef
    lease: leases.LeaseDecision | None
    session: SessionRecord | None  # the session to run on, when the lease was granted
    creation: Creation | None = None  # a session not written yet (rule 5)
    run: RunRecord | None = None  # a background request's run, written (rule 6)


@builds_fast
@attrs.frozen
class Writes:
    """The records :func:`decide` asks the store to write, in its transaction."""

    issue_key: str | None = None  # insert the identity with this key
    last_seen: tuple[str, routing.LastSeen] | None = None  # (isolation key, record)
    create: tuple[SessionAlias, SessionRecord] | None = None  # a new alias and its session
    lease: leases.LeaseState | None = None
    run: RunRecord | None = None  # a background run to insert (rule 6)

    @property
    def empty(self) -> bool:
        """Nothing to write: the opening needs no write transaction (rule 5)."""
        return (
            self.issue_key is None
            and self.last_seen is None
            and self.create is None
            and self.lease is None
            and self.run is None
        )


Outcome = Refused | Opened

# Built on every turn: without the trip through ``type.__call__``.
_session_ref = builder(SessionRef)
_opened = builder(Opened)
_writes = builder(Writes)
_creation = builder(Creation)
_NOTHING_TO_WRITE = Writes()


def decide(opening: Opening, loaded: Loaded) -> tuple[Outcome, Writes]:
    """The turn's opening from what the store loaded; see the module rules."""
    decision = authorization.authorize(
        opening.access, opening.identity, loaded.facts, is_direct=opening.is_direct
    )
    if not isinstance(decision, Allowed):
        return Refused(decision), Writes()

    key = loaded.isolation_key
    issue_key = None
    if key is None:
        key = issue_key = identity.candidate_isolation_key(opening.identity, opening.run_id)
    last_seen = (key, opening.last_seen) if opening.last_seen is not None else None

    scope = opening.scope
    if scope is not None and loaded.alias is None:
        scope = scope.owned_by(key)  # only a session still to create needs its owner named
    session_decision: sessions.SessionDecision
    if opening.fork_scope is not None:
        session_decision = sessions.resolve_fork(
            opening.fork_scope.owned_by(key),
            loaded.alias,
            has_source_key=opening.has_source_key,
            new_session_id=opening.new_session_id,
            now=opening.now,
        )
    else:
        session_decision = sessions.resolve(
            opening.session_mode,
            scope,
            loaded.alias,
            new_session_id=opening.new_session_id,
            now=opening.now,
        )
    if isinstance(session_decision, sessions.SessionNotFound):
        return Refused(None), Writes(issue_key, last_seen)
    if isinstance(session_decision, sessions.Stateless):
        ref = SessionRef(key, None, opening.session_key)
        run = _background_run(opening, ref)
        return Opened(ref, None, None, run=run), Writes(issue_key, last_seen, run=run)

    record: SessionRecord | None
    lease_state: leases.LeaseState | None  # None: a new session's, never granted
    create = None
    if opening.fork_scope is not None and loaded.fork_alias is not None:
        alias = loaded.fork_alias  # created by an earlier try: it wins, as an insert would
        record = loaded.fork_session
        lease_state = loaded.fork_lease
    # a tuple of classes, not ``A | B``: that builds a union object on every turn
    elif isinstance(session_decision, (sessions.CreateSession, sessions.ForkSession)):
        alias = session_decision.alias
        if isinstance(session_decision, sessions.ForkSession):
            record = sessions.forked_record(loaded.session, alias, opening.now)
        else:
            record = sessions.new_session_record(alias, opening.now)
        create = (alias, record)
        lease_state = None
    else:
        alias = session_decision.alias
        record = loaded.session
        lease_state = loaded.lease

    if opening.background is not None:
        ref = _session_ref(key, alias.session_id, opening.session_key)
        run = _background_run(opening, ref)
        return Opened(ref, None, None, run=run), Writes(issue_key, last_seen, create, run=run)

    new_lease, lease_decision = leases.arrive(
        lease_state,
        alias.session_id,
        opening.run_id,
        opening.strategy,
        opening.now,
        opening.lease_seconds,
    )
    granted = isinstance(lease_decision, leases.Granted)
    ref = _session_ref(key, alias.session_id, opening.session_key)
    if (
        create is not None
        and record is not None  # always, for a session created here
        and opening.create_at_finish
        and granted
        and issue_key is None
        and last_seen is None
    ):
        creation = _creation(alias, record, new_lease)
        return _opened(ref, lease_decision, record, creation), _NOTHING_TO_WRITE
    opened = _opened(ref, lease_decision, record if granted else None)
    return opened, _writes(issue_key, last_seen, create, new_lease)


def _background_run(opening: Opening, ref: SessionRef) -> RunRecord | None:
    """The run a background opening records in ``ref`` (rule 6); ``None`` for a turn."""
    plan = opening.background
    if plan is None:
        return None
    return background.new_run(
        token=opening.run_id,
        request=plan.request,
        isolation_key=ref.isolation_key,
        session_id=ref.session_id,
        session_key=ref.key,
        now=opening.now,
        max_attempts=plan.max_attempts,
    )
