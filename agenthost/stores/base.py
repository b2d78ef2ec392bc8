"""The state-store contract: everything the host remembers, behind one interface.

Every store (memory, SQLite, PostgreSQL) implements this class and passes the one contract
suite in ``tests/stores/``. A store performs storage and atomicity only: where a change
needs a decision (a lease step, a run transition, a session rotation) the store loads the
record inside its transaction, calls the pure function from ``agenthost.sansio_core`` and
writes what it returns. It never decides on its own.

Linking follows the same pattern: a merge, an unlink, presented claims and a one-time-code
completion each load what the decision needs and apply ``linking`` / ``link_codes`` inside
one transaction, so two concurrent completions of one code link exactly once.

All methods are async; stores with sync drivers run them through ``anyio.to_thread`` so
they work under asyncio and trio alike.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import attrs

from agenthost.sansio_core import delivery, leases, opening
from agenthost.sansio_core.background import RunEvent, RunRecord, RunTransitionRefused
from agenthost.sansio_core.delivery import (
    Delivery,
    DeliveryEvent,
    DeliveryStatus,
    DeliveryTransitionRefused,
)
from agenthost.sansio_core.effects import LeaseAnswer, RequestContext
from agenthost.sansio_core.link_codes import AttemptCounter, CodeChallenge, CodeLimits
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.linking import LinkRecord, LinkResult, UserFacts, VerifiedClaims
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import ChannelIdentity, RunStatus
from agenthost.sansio_core.values import builds_fast

# 2: the singletons table in SQLite (PostgreSQL had it).
# 3: sessions.state_expires_when_idle (and its index), for ``expire_idle_states``.
# 4: session states as a head and appended tails in SQLite (PostgreSQL: unchanged).
SCHEMA_VERSION = 4


class StoreError(Exception):
    """A store cannot be used as configured (a configuration error, raised at start-up)."""


class StoreSchemaError(StoreError):
    """The stored data was written by a schema this version does not know."""


class RunNotFound(KeyError):
    """No background run has that token (or it expired)."""


class DeliveryNotFound(KeyError):
    """No delivery has that id (or it was purged)."""


#: What :meth:`Store.apply_delivery_events` answers for one step: the delivery as stored
#: after it, or why it was not applied (the same exceptions ``apply_delivery_event`` raises).
DeliveryStepAnswer = Delivery | DeliveryNotFound | DeliveryTransitionRefused


@builds_fast  # a channel keeps several a turn (a Responses create: three)
@attrs.frozen
class ChannelRecord:
    """A record a channel keeps for its own protocol (a stored response, a conversation item,
    a polling cursor). Keys sort within ``(channel, kind)``; a channel pads numbers in keys
    so that order is meaningful. ``owner`` is the isolation key allowed to read it, if any.
    """

    channel: str
    kind: str
    key: str
    value: Mapping[str, Any]
    owner: str | None = None
    created_at: float = 0.0
    expires_at: float | None = None


@attrs.frozen
class TurnWrites:
    """What a finished turn wrote besides its session, committed with the session's save and
    the lease's release (:meth:`Store.finish_turn`), so a crash keeps all of it or none.

    ``run_event`` completes (or fails) the background run the turn ran as; when the run's
    transition is refused (it was cancelled or taken over meanwhile) the run and
    ``deliveries`` are left as they are, as with :meth:`Store.complete_run_with_deliveries`.
    """

    run_event: tuple[str, RunEvent] | None = None  # (token, event)
    deliveries: tuple[Delivery, ...] = ()
    channel_records: tuple[ChannelRecord, ...] = ()


@attrs.frozen
class FinishedTurn:
    saved: bool  # the session was saved (the run still held the lease, and succeeded)
    run: RunRecord | None = None  # the background run after ``run_event``
    run_refused: str | None = None  # why ``run_event`` was refused, when it was


def run_refusal_reason(error: RunTransitionRefused | RunNotFound) -> str:
    """Why a run's transition was not applied, for :attr:`FinishedTurn.run_refused`."""
    return error.reason if isinstance(error, RunTransitionRefused) else "the run is gone"


def apply_delivery_steps(
    current: Mapping[str, Delivery], steps: Sequence[tuple[str, DeliveryEvent]]
) -> tuple[list[DeliveryStepAnswer], dict[str, Delivery]]:
    """Inside a store's transaction for :meth:`Store.apply_delivery_events`: the core's
    ``delivery.apply`` on each step in order, given the deliveries the steps name as loaded.

    Answers one :data:`DeliveryStepAnswer` per step, and the deliveries to write back (each
    once, as its last step left it).
    """
    latest = dict(current)
    changed: dict[str, Delivery] = {}
    answers: list[DeliveryStepAnswer] = []
    for delivery_id, event in steps:
        found = latest.get(delivery_id)
        if found is None:
            answers.append(DeliveryNotFound(delivery_id))
            continue
        try:
            new = delivery.apply(found, event)
        except DeliveryTransitionRefused as refused:
            answers.append(refused)
            continue
        if new is not found:  # a Recover that finds the sender alive changes nothing
            latest[delivery_id] = changed[delivery_id] = new
        answers.append(new)
    return answers, changed


class Store(abc.ABC):
    """The contract. See the module docstring for what a store may and may not do."""

    async def open(self) -> None:  # noqa: B027 - optional for stores with nothing to open
        """Prepare the store (create or migrate its schema). Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional for stores with nothing to close
        """Release connections. The store may be opened again."""

    # --- identities -----------------------------------------------------------------

    @abc.abstractmethod
    async def load_context(
        self, identity: ChannelIdentity, scope: ScopeKey | None, *, facts: bool = False
    ) -> RequestContext:
        """The identity's isolation key and, when known, the alias of ``scope``, in one trip.

        ``scope.owner=None`` means the identity's own isolation key. With ``facts`` (and a
        known identity) the same trip loads the user's :class:`UserFacts`: the other
        identities sharing the key and every claim verified for any of them.
        """

    @abc.abstractmethod
    async def issue_isolation_key(
        self, identity: ChannelIdentity, candidate: str, now: float
    ) -> str:
        """Store ``candidate`` for the identity unless it has a key; return the stored key."""

    # --- links and verified claims --------------------------------------------------

    @abc.abstractmethod
    async def load_facts(self, identity: ChannelIdentity) -> UserFacts | None:
        """What linking established about the identity's user (``None``: never seen)."""

    @abc.abstractmethod
    async def list_identities(self, isolation_key: str) -> list[ChannelIdentity]:
        """Every identity sharing ``isolation_key`` (without display attributes), in order."""

    @abc.abstractmethod
    async def list_links(self, isolation_key: str) -> list[LinkRecord]:
        """The link records of the identities on ``isolation_key``, oldest first."""

    @abc.abstractmethod
    async def link_identities(
        self,
        anchor: ChannelIdentity,
        moving: ChannelIdentity,
        rules: LinkRules,
        *,
        source: str,
        now: float,
    ) -> LinkResult:
        """Merge ``moving``'s user onto ``anchor``'s key (``linking.plan_merge``), atomically.

        Every identity on ``moving``'s key moves and gets a link record; a ``moving``
        never seen is inserted with the anchor's key. Sessions stay where they are. An
        ``anchor`` never seen links nothing (``NOT_LINKED``).
        """

    @abc.abstractmethod
    async def unlink_identity(
        self, identity: ChannelIdentity, new_key: str, now: float
    ) -> LinkResult:
        """Give the identity ``new_key`` and forget its claims and link record
        (``linking.plan_unlink``), atomically."""

    @abc.abstractmethod
    async def link_verified_claims(
        self,
        identity: ChannelIdentity,
        claims: VerifiedClaims,
        rules: LinkRules,
        *,
        candidate_key: str,
        now: float,
    ) -> LinkResult:
        """Record claims verified for ``identity`` and link it to the user already holding
        their subject (``linking.plan_claims_link``), atomically.

        An identity never seen gets ``candidate_key`` first. Claims from the same source
        replace the identity's earlier ones. Nothing is recorded when the link is refused.
        """

    # --- one-time link codes --------------------------------------------------------

    @abc.abstractmethod
    async def put_link_challenge(self, challenge: CodeChallenge) -> bool:
        """Store a new challenge, replacing its issuer's earlier one.

        Answers ``False`` (and stores nothing) when another issuer's stored challenge has
        the same locator: the caller draws a fresh code.
        """

    @abc.abstractmethod
    async def get_link_challenge(self, locator: str) -> CodeChallenge | None:
        """The stored challenge with ``locator`` (expired ones until they are deleted)."""

    @abc.abstractmethod
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
        """One ``/link CODE``, atomically: load the challenge, both users and the attempt
        counters, apply ``link_codes.decide_attempt`` and write what it answers (the
        challenge, the counters, and the merge when the code matched)."""

    @abc.abstractmethod
    async def get_attempt_counter(self, scope: str) -> AttemptCounter:
        """The stored counter of ``scope`` (a fresh one when none is stored)."""

    @abc.abstractmethod
    async def delete_expired_link_records(self, now: float) -> int:
        """Delete challenges and attempt counters whose expiry has passed; return how many."""

    # --- sessions -------------------------------------------------------------------

    @abc.abstractmethod
    async def load_alias(self, scope: ScopeKey) -> SessionAlias | None:
        """The alias of a fully owned scope."""

    @abc.abstractmethod
    async def create_session(self, alias: SessionAlias, now: float) -> SessionAlias:
        """Insert the alias and its empty session unless the alias exists; return the winner."""

    @abc.abstractmethod
    async def fork_session(
        self, source_session_id: str, alias: SessionAlias, now: float
    ) -> SessionAlias:
        """Insert the alias and a session copying the source's state unless the alias exists;
        return the winner. The source session is not changed."""

    @abc.abstractmethod
    async def rotate_session(
        self, scope: ScopeKey, new_session_id: str, now: float
    ) -> SessionAlias:
        """Point the alias at a fresh empty session (a reset); the old session stays stored."""

    @abc.abstractmethod
    async def load_session(self, session_id: str) -> SessionRecord | None:
        """One stored session."""

    @abc.abstractmethod
    async def list_sessions(self, owner: str) -> list[SessionRecord]:
        """Every session an owner has had, oldest first (history survives resets)."""

    @abc.abstractmethod
    async def expire_idle_states(self, now: float, ttl: float, limit: int) -> int:
        """Drop the expired state of up to ``limit`` sessions; return how many were dropped.

        Candidates are sessions whose state expires when idle, saved at or before
        ``now - ttl``, least recently saved first; each one's stored lease is read with it
        and ``sessions.idle_state_expired`` decides. A dropped state becomes ``None`` and
        stops expiring; the session's times, turns and alias are not changed. The decision
        and the drop are atomic with the session's lease: a turn that takes the lease, or
        saves, meanwhile is never overwritten. A session that another replica is changing
        at that moment may be skipped (a later pass finds it).
        """

    # --- session leases -------------------------------------------------------------

    @abc.abstractmethod
    async def open_turn(self, plan: opening.Opening) -> opening.Outcome:
        """Open a foreground turn, or record a background one, in one transaction (one
        round trip).

        Load :class:`opening.Loaded` (the identity's key and, when ``plan.access`` needs
        them, its facts; the alias of ``plan.scope`` under the owner it names or else under
        that key; the alias's lease and session), apply ``opening.decide`` and write exactly
        the records its ``Writes`` name: the identity's key, the last-seen record, the alias
        with its empty session, the lease, and a background plan's run (inserted as
        :meth:`create_run` does: a token in use raises ``ValueError`` and writes nothing).

        For a plan with ``create_at_finish`` the store may load and decide outside a write
        transaction; when the decision's ``Writes`` are not ``empty`` it must then load and
        decide again inside one (``opening`` rule 5).
        """

    @abc.abstractmethod
    async def apply_lease_event(self, session_id: str, event: leases.LeaseEvent) -> LeaseAnswer:
        """Apply ``leases.apply`` atomically; when it grants, load the session too."""

    @abc.abstractmethod
    async def finish_run(
        self,
        session_id: str,
        run_id: str,
        session: SessionRecord | None,
        now: float,
        *,
        creation: opening.Creation | None = None,
    ) -> bool:
        """Save ``session`` (if given) and release the lease, atomically.

        Saves only while ``run_id`` still holds the lease; returns whether it saved.

        With ``creation`` (a session the opening did not write, ``opening`` rule 5) the
        lease is ``creation.lease``, held by ``run_id``: write the alias, the session
        (``session``, or else ``creation.record``) and the released lease. When the alias
        exists already, write none of them and answer ``False``.
        """

    @abc.abstractmethod
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
        """:meth:`finish_run` (nothing of it when ``session_id`` is ``None``: a stateless
        turn; ``creation`` as there) and ``writes``, in one transaction.

        This is what makes a turn's effects exactly-once: a background run whose session
        was saved is completed by the same commit, so recovery never re-applies a saved
        turn, and the pushes a turn produced are queued by the commit that saved it.
        """

    # --- background runs ------------------------------------------------------------

    @abc.abstractmethod
    async def create_run(self, record: RunRecord) -> None:
        """Record a new run (``queued``). A duplicate token is an error."""

    @abc.abstractmethod
    async def get_run(self, token: str) -> RunRecord | None:
        """A run by token, or ``None``."""

    @abc.abstractmethod
    async def apply_run_event(self, token: str, event: RunEvent) -> RunRecord:
        """Apply ``background.apply`` atomically and store the result.

        Raises :class:`RunNotFound` or ``background.RunTransitionRefused``.
        """

    @abc.abstractmethod
    async def list_runs(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        """Runs in any of ``statuses``, oldest first."""

    @abc.abstractmethod
    async def delete_expired_runs(self, now: float) -> int:
        """Delete finished runs whose ``expires_at`` has passed; return how many."""

    # --- last seen ------------------------------------------------------------------

    @abc.abstractmethod
    async def record_last_seen(self, isolation_key: str, seen: LastSeen) -> None:
        """Upsert when ``seen.identity`` last spoke in ``seen.conversation_id`` (one write)."""

    @abc.abstractmethod
    async def list_last_seen(self, isolation_key: str) -> list[LastSeen]:
        """Where the user of ``isolation_key`` was seen, newest first.

        A record belongs to the user its identity belongs to *now*: after a link the
        moved identity's records follow it, after an unlink they leave with it. An
        identity the store has no key for (a custom resolver) keeps the key it was
        recorded under.
        """

    # --- the delivery outbox --------------------------------------------------------

    @abc.abstractmethod
    async def complete_run_with_deliveries(
        self, token: str, event: RunEvent, deliveries: Sequence[Delivery]
    ) -> RunRecord:
        """Apply ``background.apply`` and record ``deliveries``, in one transaction.

        A refused transition records nothing. A delivery whose id exists is kept as it is
        (the id is the idempotency key).
        """

    @abc.abstractmethod
    async def schedule_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Record deliveries (insert-if-absent by id), in one transaction."""

    @abc.abstractmethod
    async def claim_due_deliveries(
        self, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries (``delivery.Claim``), oldest due first,
        atomically: two claimers never claim the same delivery."""

    @abc.abstractmethod
    async def apply_delivery_event(self, delivery_id: str, event: DeliveryEvent) -> Delivery:
        """Apply ``delivery.apply`` atomically and store the result.

        Raises :class:`DeliveryNotFound` or ``delivery.DeliveryTransitionRefused``.
        """

    @abc.abstractmethod
    async def apply_delivery_events(
        self, steps: Sequence[tuple[str, DeliveryEvent]]
    ) -> list[DeliveryStepAnswer]:
        """Apply many ``(delivery_id, event)`` steps in order, all in one transaction: the
        outcomes of many sends in one round trip.

        Each step is applied as :meth:`apply_delivery_event` would (a later step on the same
        delivery sees the earlier one's result). A missing delivery or a refused step writes
        nothing and is answered, in its place, with the exception ``apply_delivery_event``
        would raise; the other steps are stored all the same.
        """

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """One delivery by id."""

    @abc.abstractmethod
    async def list_deliveries(
        self,
        statuses: Iterable[DeliveryStatus] | None = None,
        *,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Delivery]:
        """Deliveries in any of ``statuses`` (all when ``None``), oldest first (by
        ``created_at``, then id), or newest first: the ``limit`` newest, for operators."""

    @abc.abstractmethod
    async def next_delivery_due(self) -> float | None:
        """The earliest ``next_attempt_at`` of a ``scheduled`` or ``failed`` delivery."""

    @abc.abstractmethod
    async def purge_deliveries(
        self, statuses: Iterable[DeliveryStatus], *, updated_before: float | None = None
    ) -> int:
        """Delete the deliveries in any of ``statuses`` (last changed at or before
        ``updated_before``, when given); return how many."""

    # --- channel records ------------------------------------------------------------

    @abc.abstractmethod
    async def put_channel_records(self, records: Sequence[ChannelRecord]) -> None:
        """Insert or replace records, all in one transaction (one round trip)."""

    @abc.abstractmethod
    async def insert_channel_records(
        self,
        records: Sequence[ChannelRecord],
        *,
        companions: Mapping[str, Sequence[ChannelRecord]] | None = None,
        put: Sequence[ChannelRecord] = (),
    ) -> set[str]:
        """Insert the records whose ``(channel, kind, key)`` is absent, leaving present ones
        alone; return the keys inserted. All in one transaction (one round trip), which
        also writes (inserts or replaces) ``companions[key]`` for each key inserted and
        ``put`` unconditionally.

        Two concurrent inserts of one key (on any replica sharing the store) insert it once:
        exactly one of them reports the key. Expired records still present count as present.
        A key given twice in ``records`` is inserted (and reported) once, from its first
        record. Keys are reported without their channel and kind, so ``records`` are best
        of one kind (a de-duplication mark, say, with the payload as its companion).
        """

    @abc.abstractmethod
    async def get_channel_record(self, channel: str, kind: str, key: str) -> ChannelRecord | None:
        """One record (expired ones included until they are deleted)."""

    @abc.abstractmethod
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
        """Records whose key starts with ``prefix``, in key order, strictly past ``after``."""

    @abc.abstractmethod
    async def list_channel_record_owners(
        self, channel: str, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[tuple[str, str | None]]:
        """``(key, owner)`` of the records of one kind, in key order, strictly past
        ``after``: what :meth:`list_channel_records` lists, without reading or decoding
        values (the durable inbox's recovery sweeps every few seconds on every replica).
        """

    @abc.abstractmethod
    async def delete_channel_records(self, channel: str, kind: str, *, prefix: str) -> int:
        """Delete the records whose key starts with ``prefix``; return how many."""

    @abc.abstractmethod
    async def delete_expired_channel_records(self, now: float) -> int:
        """Delete records whose ``expires_at`` has passed; return how many."""

    # The default serializes changes with one lock in this object: right for a store only
    # one process uses. A store shared by replicas overrides ``change_channel_record``.
    _change_lock: anyio.Lock | None = None

    async def change_channel_record(
        self,
        channel: str,
        kind: str,
        key: str,
        change: Callable[[ChannelRecord | None], Sequence[ChannelRecord]],
    ) -> list[ChannelRecord]:
        """Read one record and put what ``change`` makes of it, atomically; return what
        was put.

        ``change`` gets the record (``None`` when absent; expired ones included) and returns
        the records to put: the record's new version and any others, or nothing. It must
        be pure and quick: a store may call it in a worker thread, inside its transaction,
        with the record locked. Two changes of one record never interleave, on any replica
        sharing the store, and a ``delete_channel_records`` covering it happens wholly
        before or after a change (a conversation's item counter, say).
        """
        if self._change_lock is None:
            self._change_lock = anyio.Lock()
        async with self._change_lock:
            made = list(change(await self.get_channel_record(channel, kind, key)))
            await self.put_channel_records(made)
        return made

    # --- singletons (one holder among replicas) ---------------------------------------

    # The default keeps the leases in this object: right for a store only one process uses
    # (memory). A store other processes share (SQLite, PostgreSQL) overrides both.
    _singletons: dict[str, tuple[str, float]] | None = None

    async def acquire_singleton(self, name: str, holder: str, *, now: float, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``now + ttl``, atomically.

        Answers whether ``holder`` holds it now: it does when nobody held it, it held it
        already, or the previous holder's lease had expired (a holder that died). Replicas
        sharing the store elect one of them this way (one Telegram poller per bot).
        """
        if self._singletons is None:
            self._singletons = {}
        current = self._singletons.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._singletons[name] = (holder, now + ttl)
        return True

    async def watch_deliveries(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` whenever another process scheduled deliveries; run until cancelled.

        The host runs it beside its delivery worker, so an idle worker on one replica
        starts at once on what another replica scheduled. The default has no other process
        to hear from and waits forever; PostgreSQL listens (``LISTEN``/``NOTIFY``).
        """
        await anyio.sleep_forever()

    async def release_singleton(self, name: str, holder: str) -> None:
        """Give up the lease ``name`` if ``holder`` holds it (a clean shutdown)."""
        if self._singletons is not None and self._singletons.get(name, ("",))[0] == holder:
            del self._singletons[name]

    async def delete_expired_singletons(self, now: float) -> int:
        """Delete the leases that lapsed by ``now``; return how many.

        A process that dies leaves its lease behind (each process holds one on its inbox
        records), so without this sweep they would pile up. A lapsed lease and an absent
        one answer ``acquire_singleton`` alike: the sweep changes no election.
        """
        if not self._singletons:
            return 0
        lapsed = [name for name, (_, expires_at) in self._singletons.items() if expires_at <= now]
        for name in lapsed:
            del self._singletons[name]
        return len(lapsed)
