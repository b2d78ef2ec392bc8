"""The PostgreSQL store: the store contract on one database shared by many replicas.

Every guarantee the SQLite store gives one process holds here across processes: each call
is one transaction (a savepoint in a group-committed batch, see ``postgres_writer``) that
locks what it reads before it decides (``postgres_queries`` says how), then calls the pure
function from ``agenthost.sansio_core`` and writes what it returns. The outbox is claimed
with ``FOR UPDATE SKIP LOCKED``; background runs, session leases, link codes and their
attempt counters live in the database, so any replica may take over from one that died.

The driver is psycopg 3, synchronous, run in worker threads: the store works under asyncio
and trio alike. Records are ``jsonb`` written by ``stores.codec``; pickle is never used.

``PostgresStore(dsn, schema=...)`` keeps its tables in ``schema`` (created if missing), or
in the connection's ``search_path`` when none is named. Opening it creates or migrates the
schema (``auto_migrate=False`` leaves that to ``agenthost migrate`` and refuses an older
one); a schema written by a newer agenthost is always refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs
import psycopg
from psycopg import sql

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
    UserFacts,
    VerifiedClaims,
)
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import ChannelIdentity, RunStatus
from agenthost.stores import codec, postgres_schema
from agenthost.stores import postgres_queries as q
from agenthost.stores import rows as table_rows
from agenthost.stores.base import (
    ChannelRecord,
    DeliveryNotFound,
    DeliveryStepAnswer,
    FinishedTurn,
    RunNotFound,
    Store,
    StoreError,
    TurnWrites,
    apply_delivery_steps,
    run_refusal_reason,
)
from agenthost.stores.postgres_writer import DEFAULT_POOL_SIZE, Conn, Lanes, connect

T = TypeVar("T")

log = logging.getLogger(__name__)

NOTIFY_WAIT = 0.5
RELISTEN_SECONDS = 2.0

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresStore(Store):
    """The store contract on PostgreSQL (many replicas, one database)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        auto_migrate: bool = True,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise StoreError(
                f"PostgreSQL schema name {schema!r} must be lower-case letters, digits and "
                "underscores, starting with a letter or underscore"
            )
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.auto_migrate = auto_migrate
        self._lanes = Lanes(lambda: connect(dsn, schema), pool_size)
        self._checked = False
        # LISTEN/NOTIFY channel of this schema's outbox (named at open: the schema may come
        # from the connection's search_path).
        self._deliveries_channel = _notify_channel(schema or "public")

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if not self._checked:
            await self._lanes.alone(self._prepare_sync)
            self._checked = True

    async def close(self) -> None:
        await self._lanes.close()

    async def migrate(self) -> tuple[int, int]:
        """Create or migrate the schema; return (version found, version now)."""
        result = await self._lanes.alone(self._migrate_sync)
        self._checked = True
        return result

    def _migrate_sync(self, conn: Conn) -> tuple[int, int]:
        if self.schema is not None:
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone()
            if exists is None:  # creating needs a privilege using an existing one does not
                with conn.transaction():
                    q.lock(conn, "create-schema", self.schema)
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        versions = postgres_schema.migrate(conn)
        self._name_channel(conn)
        return versions

    def _prepare_sync(self, conn: Conn) -> None:
        if self.auto_migrate:
            self._migrate_sync(conn)
        else:
            postgres_schema.check_version(conn, migrated=False)
            self._name_channel(conn)

    def _name_channel(self, conn: Conn) -> None:
        row = conn.execute("SELECT current_schema()").fetchone()
        if row is not None and row[0]:
            self._deliveries_channel = _notify_channel(str(row[0]))

    async def _run(self, work: Callable[[Conn], T]) -> T:
        if not self._checked:
            await self.open()
        return await self._lanes.submit(work)

    async def _read(self, work: Callable[[Conn], T]) -> T:
        """:meth:`_run` for ``work`` that only reads (outside a transaction when its batch
        holds only reads, ``postgres_writer``)."""
        if not self._checked:
            await self.open()
        return await self._lanes.submit(work, read_only=True)

    # --- identities -----------------------------------------------------------------

    async def load_context(
        self, identity: ChannelIdentity, scope: ScopeKey | None, *, facts: bool = False
    ) -> RequestContext:
        return await self._run(lambda conn: q.load_context(conn, identity, scope, facts))

    async def issue_isolation_key(
        self, identity: ChannelIdentity, candidate: str, now: float
    ) -> str:
        def work(conn: Conn) -> str:
            q.insert_identity_if_absent(conn, identity, candidate, now)
            key = q.select_key(conn, identity)
            assert key is not None  # inserted above or already present
            return key

        return await self._run(work)

    # --- links and verified claims --------------------------------------------------

    async def load_facts(self, identity: ChannelIdentity) -> UserFacts | None:
        context = await self.load_context(identity, None, facts=True)
        return context.facts if context.isolation_key is not None else None

    async def list_identities(self, isolation_key: str) -> list[ChannelIdentity]:
        return await self._run(lambda conn: list(q.members(conn, isolation_key)))

    async def list_links(self, isolation_key: str) -> list[LinkRecord]:
        return await self._run(lambda conn: q.list_links(conn, isolation_key))

    async def link_identities(
        self,
        anchor: ChannelIdentity,
        moving: ChannelIdentity,
        rules: LinkRules,
        *,
        source: str,
        now: float,
    ) -> LinkResult:
        def work(conn: Conn) -> LinkResult:
            # Links change users' membership: one at a time across every replica.
            q.lock(conn, q.LINKING_LOCK)
            q.lock_identities(conn, [anchor, moving])
            anchor_user = q.user(conn, anchor)
            moving_user = q.user(conn, moving)
            if anchor_user.isolation_key is None:
                return LinkResult(False, moving_user.isolation_key, LinkReason.NOT_LINKED)
            plan = linking.plan_merge(
                anchor, anchor_user, moving, moving_user, rules, source=source, now=now
            )
            if isinstance(plan, LinkResult):
                return plan
            q.apply_merge(conn, plan, now)
            return LinkResult(True, plan.to_key, LinkReason.LINKED)

        return await self._run(work)

    async def unlink_identity(
        self, identity: ChannelIdentity, new_key: str, now: float
    ) -> LinkResult:
        def work(conn: Conn) -> LinkResult:
            q.lock(conn, q.LINKING_LOCK)
            q.lock_identity(conn, identity)
            plan = linking.plan_unlink(
                identity,
                q.user(conn, identity),
                has_claims=q.has_claims(conn, identity),
                new_key=new_key,
            )
            if isinstance(plan, LinkResult):
                return plan
            q.set_key(conn, identity, plan.to_key, now)
            q.forget_claims(conn, identity, source=None)
            q.delete_link(conn, identity)
            return LinkResult(False, plan.to_key, LinkReason.UNLINKED)

        return await self._run(work)

    async def link_verified_claims(
        self,
        identity: ChannelIdentity,
        claims: VerifiedClaims,
        rules: LinkRules,
        *,
        candidate_key: str,
        now: float,
    ) -> LinkResult:
        def work(conn: Conn) -> LinkResult:
            q.lock(conn, q.LINKING_LOCK)
            q.lock_identity(conn, identity)
            q.insert_identity_if_absent(conn, identity, candidate_key, now)
            holders = [
                (holder, q.user(conn, holder))
                for holder in q.claim_holders(conn, linking.SUBJECT_CLAIM, claims.subject)
            ]
            decision = linking.plan_claims_link(
                identity,
                q.user(conn, identity),
                holders,
                rules,
                source=linking.claims_source(claims.source),
                now=now,
            )
            if decision.merge is not None:
                q.apply_merge(conn, decision.merge, now)
            if decision.record:
                q.forget_claims(conn, identity, source=claims.source)
                q.record_claims(conn, identity, list(claims.rows()), claims.source, now)
            return decision.result

        return await self._run(work)

    # --- one-time link codes --------------------------------------------------------

    async def put_link_challenge(self, challenge: CodeChallenge) -> bool:
        issuer = challenge.issuer

        def work(conn: Conn) -> bool:
            # In the order attempts take them (linking first): no wait cycle with one.
            q.lock(conn, q.LINKING_LOCK)
            q.lock(conn, "challenge", challenge.locator)
            q.lock_identity(conn, issuer)
            taken = q.challenge_issuer(conn, challenge.locator)
            if taken is not None and taken != (issuer.channel, issuer.native_id):
                return False
            q.delete_challenges_of(conn, issuer)
            q.write_challenge(conn, challenge)
            return True

        return await self._run(work)

    async def get_link_challenge(self, locator: str) -> CodeChallenge | None:
        return await self._run(lambda conn: q.select_challenge(conn, locator))

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
        def work(conn: Conn) -> LinkResult:
            # Every attempt moves the global counter: attempts serialize across replicas,
            # so a guesser spreading guesses over replicas still meets one shared limit.
            q.lock(conn, q.LINKING_LOCK)
            challenge = q.select_challenge(conn, locator, for_update=True)
            involved = [completer] + ([challenge.issuer] if challenge is not None else [])
            q.lock_identities(conn, involved)
            outcome = link_codes.decide_attempt(
                challenge=challenge,
                identity_counter=q.select_counter(conn, link_codes.identity_scope(completer)),
                global_counter=q.select_counter(conn, link_codes.GLOBAL_SCOPE),
                completer=completer,
                secret=secret,
                now=now,
                limits=limits,
                completer_user=q.user(conn, completer),
                issuer_user=q.user(conn, challenge.issuer) if challenge is not None else None,
                rules=rules,
            )
            if outcome.challenge is not None:
                q.write_challenge(conn, outcome.challenge)
            q.write_counter(conn, outcome.identity_counter)
            q.write_counter(conn, outcome.global_counter)
            if outcome.merge is not None:
                q.apply_merge(conn, outcome.merge, now)
            return outcome.result

        return await self._run(work)

    async def get_attempt_counter(self, scope: str) -> AttemptCounter:
        return await self._run(lambda conn: q.select_counter(conn, scope))

    async def delete_expired_link_records(self, now: float) -> int:
        def work(conn: Conn) -> int:
            q.lock(conn, q.LINKING_LOCK)
            # The indexes narrow the candidates; the core decides what has expired.
            rows = conn.execute(
                "SELECT record FROM link_challenges WHERE expires_at <= %s", (now,)
            ).fetchall()
            doomed = [
                challenge.locator
                for challenge in (codec.load(row[0], CodeChallenge) for row in rows)
                if link_codes.is_expired(challenge, now)
            ]
            conn.execute("DELETE FROM link_challenges WHERE locator = ANY(%s)", (doomed,))
            rows = conn.execute(
                "SELECT record FROM link_attempts WHERE expires_at <= %s", (now,)
            ).fetchall()
            idle = [
                counter.scope
                for counter in (codec.load(row[0], AttemptCounter) for row in rows)
                if link_codes.counter_is_expired(counter, now)
            ]
            conn.execute("DELETE FROM link_attempts WHERE scope = ANY(%s)", (idle,))
            return len(doomed) + len(idle)

        return await self._run(work)

    # --- sessions -------------------------------------------------------------------

    async def load_alias(self, scope: ScopeKey) -> SessionAlias | None:
        owner, qualifier = _alias_key(scope)
        return await self._run(lambda conn: q.select_alias(conn, owner, qualifier))

    async def create_session(self, alias: SessionAlias, now: float) -> SessionAlias:
        def work(conn: Conn) -> SessionAlias:
            q.lock_alias(conn, alias.owner, alias.qualifier)
            existing = q.select_alias(conn, alias.owner, alias.qualifier)
            if existing is not None:
                return existing
            q.write_alias(conn, alias)
            q.write_session(conn, alias.session_id, sessions.new_session_record(alias, now))
            return alias

        return await self._run(work)

    async def fork_session(
        self, source_session_id: str, alias: SessionAlias, now: float
    ) -> SessionAlias:
        def work(conn: Conn) -> SessionAlias:
            q.lock_alias(conn, alias.owner, alias.qualifier)
            existing = q.select_alias(conn, alias.owner, alias.qualifier)
            if existing is not None:
                return existing
            source = q.select_session(conn, source_session_id)
            q.write_alias(conn, alias)
            q.write_session(conn, alias.session_id, sessions.forked_record(source, alias, now))
            return alias

        return await self._run(work)

    async def rotate_session(
        self, scope: ScopeKey, new_session_id: str, now: float
    ) -> SessionAlias:
        owner, qualifier = _alias_key(scope)

        def work(conn: Conn) -> SessionAlias:
            q.lock_alias(conn, owner, qualifier)
            current = q.select_alias(conn, owner, qualifier)
            alias = sessions.rotate(scope, current, new_session_id=new_session_id, now=now)
            q.write_alias(conn, alias)
            q.write_session(conn, alias.session_id, sessions.new_session_record(alias, now))
            return alias

        return await self._run(work)

    async def load_session(self, session_id: str) -> SessionRecord | None:
        return await self._run(lambda conn: q.select_session(conn, session_id))

    async def list_sessions(self, owner: str) -> list[SessionRecord]:
        return await self._run(lambda conn: q.list_sessions(conn, owner))

    async def expire_idle_states(self, now: float, ttl: float, limit: int) -> int:
        return await self._run(lambda conn: q.expire_idle_states(conn, now, ttl, limit))

    # --- session leases -------------------------------------------------------------

    async def open_turn(self, plan: opening.Opening) -> opening.Outcome:
        if plan.create_at_finish:
            # Decided on a read first (no locks, no transaction): when it writes nothing,
            # the session is created by the turn's save (``opening`` rule 5).
            decided = await self._read(lambda conn: _decide_opening(conn, plan, lock=False))
            if decided[1].empty:
                return decided[0]

        def work(conn: Conn) -> opening.Outcome:
            outcome, writes = _decide_opening(conn, plan, lock=True)
            # The writes depend on nothing they answer: sent together, one round trip.
            with conn.pipeline():
                if writes.issue_key is not None:
                    q.insert_identity_if_absent(conn, plan.identity, writes.issue_key, plan.now)
                if writes.last_seen is not None:
                    q.upsert_last_seen(conn, *writes.last_seen)
                if writes.create is not None:
                    created, record = writes.create
                    q.write_alias(conn, created)
                    q.write_session(conn, created.session_id, record)
                if writes.lease is not None:
                    q.write_lease(conn, writes.lease.session_id, writes.lease)
            if writes.run is not None:
                _insert_run(conn, writes.run)
            return outcome

        return await self._run(work)

    async def apply_lease_event(self, session_id: str, event: leases.LeaseEvent) -> LeaseAnswer:
        def work(conn: Conn) -> LeaseAnswer:
            with conn.pipeline():  # the lock and the read in one round trip
                q.lock_lease(conn, session_id)
                state = q.select_lease(conn, session_id)
            new_state, decision = leases.apply(state, event)
            q.write_lease(conn, session_id, new_state)
            session = None
            if isinstance(decision, leases.Granted):
                session = q.select_session(conn, session_id)
            return LeaseAnswer(decision, session)

        return await self._run(work)

    async def finish_run(
        self,
        session_id: str,
        run_id: str,
        session: SessionRecord | None,
        now: float,
        *,
        creation: opening.Creation | None = None,
    ) -> bool:
        def work(conn: Conn) -> bool:
            if creation is not None:
                return _finish_creation(conn, creation, run_id, session, now)
            # Fencing: the session is written only while ``run_id`` still holds the lease,
            # checked under the lease's lock; a replica whose lease expired and was granted
            # elsewhere saves nothing.
            with conn.pipeline():  # the lock and the read in one round trip
                q.lock_lease(conn, session_id)
                state = q.select_lease(conn, session_id)
            new_state, decision = leases.release(state, run_id, now)
            if not isinstance(decision, leases.Released):
                return False
            with conn.pipeline():
                q.write_lease(conn, session_id, new_state)
                if session is not None:
                    q.write_session(conn, session_id, session)
            return session is not None

        return await self._run(work)

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
        delivery_rows = [table_rows.delivery_row(d) for d in writes.deliveries]
        record_rows = [table_rows.channel_record_row(r) for r in writes.channel_records]
        channel = self._deliveries_channel

        def work(conn: Conn) -> FinishedTurn:
            # The run's row first, then the lease's: the one order every path takes them in.
            run, refused = None, None
            if writes.run_event is not None:
                token, event = writes.run_event
                try:
                    run = q.apply_run_event(conn, token, event)
                except (background.RunTransitionRefused, RunNotFound) as exc:
                    refused = run_refusal_reason(exc)
            saved = False
            if creation is not None:
                saved = _finish_creation(conn, creation, run_id, session, now)
            elif session_id is not None:
                with conn.pipeline():
                    q.lock_lease(conn, session_id)
                    state = q.select_lease(conn, session_id)
                new_state, decision = leases.release(state, run_id, now)
                if isinstance(decision, leases.Released):
                    q.write_lease(conn, session_id, new_state)
                    if session is not None:
                        q.write_session(conn, session_id, session)
                        saved = True
            if refused is None and delivery_rows:
                q.insert_deliveries(conn, delivery_rows, notify=channel)
            if record_rows:
                q.put_channel_records(conn, record_rows)
            return FinishedTurn(saved, run, refused)

        return await self._run(work)

    # --- background runs ------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> None:
        await self._run(lambda conn: _insert_run(conn, record))

    async def get_run(self, token: str) -> RunRecord | None:
        return await self._run(lambda conn: q.select_run(conn, token))

    async def apply_run_event(self, token: str, event: RunEvent) -> RunRecord:
        return await self._run(lambda conn: q.apply_run_event(conn, token, event))

    async def list_runs(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        wanted = sorted({status.value for status in statuses})
        if not wanted:
            return []

        def work(conn: Conn) -> list[RunRecord]:
            rows = conn.execute(
                "SELECT record FROM runs WHERE status = ANY(%s) ORDER BY created_at, token",
                (wanted,),
            ).fetchall()
            return [codec.load_run(row[0]) for row in rows]

        return await self._run(work)

    async def delete_expired_runs(self, now: float) -> int:
        def work(conn: Conn) -> int:
            # Rows another replica is changing are left for the next sweep.
            rows = conn.execute(
                "SELECT record FROM runs WHERE expires_at <= %s FOR UPDATE SKIP LOCKED", (now,)
            ).fetchall()
            expired = [
                record.token
                for record in (codec.load_run(row[0]) for row in rows)
                if background.is_expired(record, now)
            ]
            conn.execute("DELETE FROM runs WHERE token = ANY(%s)", (expired,))
            return len(expired)

        return await self._run(work)

    # --- last seen ------------------------------------------------------------------

    async def record_last_seen(self, isolation_key: str, seen: LastSeen) -> None:
        await self._run(lambda conn: q.upsert_last_seen(conn, isolation_key, seen))

    async def list_last_seen(self, isolation_key: str) -> list[LastSeen]:
        def work(conn: Conn) -> list[LastSeen]:
            rows = conn.execute(q.LIST_LAST_SEEN, {"key": isolation_key}).fetchall()
            return [
                LastSeen(channel, codec.load(identity, ChannelIdentity), conv or None, seen_at)
                for channel, conv, seen_at, identity, _ in rows
            ]

        return await self._run(work)

    # --- the delivery outbox --------------------------------------------------------

    async def complete_run_with_deliveries(
        self, token: str, event: RunEvent, deliveries: Sequence[Delivery]
    ) -> RunRecord:
        rows = [table_rows.delivery_row(d) for d in deliveries]

        channel = self._deliveries_channel

        def work(conn: Conn) -> RunRecord:
            new = q.apply_run_event(conn, token, event)
            q.insert_deliveries(conn, rows, notify=channel)
            return new

        return await self._run(work)

    async def schedule_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        rows = [table_rows.delivery_row(d) for d in deliveries]
        channel = self._deliveries_channel
        if rows:
            await self._run(lambda conn: q.insert_deliveries(conn, rows, notify=channel))

    async def claim_due_deliveries(
        self, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        def work(conn: Conn) -> list[Delivery]:
            claimed = []
            for row in conn.execute(q.CLAIM_DUE, (now, limit)).fetchall():
                found = codec.load_delivery(row[0])
                if not found.is_due(now):  # the index narrows; the core decides
                    continue
                new = delivery.apply(found, delivery.Claim(owner, now, lease_seconds))
                q.update_delivery(conn, new)
                claimed.append(new)
            return claimed

        return await self._run(work)

    async def apply_delivery_event(self, delivery_id: str, event: DeliveryEvent) -> Delivery:
        def work(conn: Conn) -> Delivery:
            found = q.select_delivery(conn, delivery_id, for_update=True)
            if found is None:
                raise DeliveryNotFound(delivery_id)
            new = delivery.apply(found, event)
            q.update_delivery(conn, new)
            return new

        return await self._run(work)

    async def apply_delivery_events(
        self, steps: Sequence[tuple[str, DeliveryEvent]]
    ) -> list[DeliveryStepAnswer]:
        steps = list(steps)

        def work(conn: Conn) -> list[DeliveryStepAnswer]:
            named = q.select_deliveries_for_update(conn, {i for i, _ in steps})
            answers, changed = apply_delivery_steps(named, steps)
            q.update_deliveries(conn, list(changed.values()))
            return answers

        return await self._run(work) if steps else []

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        return await self._run(lambda conn: q.select_delivery(conn, delivery_id))

    async def list_deliveries(
        self,
        statuses: Iterable[DeliveryStatus] | None = None,
        *,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[Delivery]:
        wanted = sorted({s.value for s in (statuses if statuses is not None else DeliveryStatus)})
        if not wanted:
            return []
        order = "DESC" if newest_first else "ASC"  # one of two literals, never input

        def work(conn: Conn) -> list[Delivery]:
            rows = conn.execute(
                "SELECT record FROM deliveries WHERE status = ANY(%s)"  # noqa: S608
                f" ORDER BY created_at {order}, delivery_id {order} LIMIT %s",
                (wanted, limit),
            ).fetchall()
            return [codec.load_delivery(row[0]) for row in rows]

        return await self._run(work)

    async def next_delivery_due(self) -> float | None:
        def work(conn: Conn) -> float | None:
            row = conn.execute(
                "SELECT min(next_attempt_at) FROM deliveries"
                " WHERE status IN ('scheduled', 'failed')"
            ).fetchone()
            return float(row[0]) if row is not None and row[0] is not None else None

        return await self._run(work)

    async def purge_deliveries(
        self, statuses: Iterable[DeliveryStatus], *, updated_before: float | None = None
    ) -> int:
        wanted = sorted({s.value for s in statuses})
        if not wanted:
            return 0
        cutoff = float("inf") if updated_before is None else updated_before

        def work(conn: Conn) -> int:
            cursor = conn.execute(
                "DELETE FROM deliveries WHERE status = ANY(%s) AND updated_at <= %s",
                (wanted, cutoff),
            )
            return cursor.rowcount

        return await self._run(work)

    # --- channel records ------------------------------------------------------------

    async def put_channel_records(self, records: Sequence[ChannelRecord]) -> None:
        rows = [table_rows.channel_record_row(r) for r in records]
        if rows:
            await self._run(lambda conn: q.put_channel_records(conn, rows))

    async def insert_channel_records(
        self,
        records: Sequence[ChannelRecord],
        *,
        companions: Mapping[str, Sequence[ChannelRecord]] | None = None,
        put: Sequence[ChannelRecord] = (),
    ) -> set[str]:
        rows = [table_rows.channel_record_row(r) for r in records]
        followers = {
            key: [table_rows.channel_record_row(r) for r in those]
            for key, those in (companions or {}).items()
        }
        always = [table_rows.channel_record_row(r) for r in put]

        def work(conn: Conn) -> set[str]:
            inserted = {row[2] for row in rows if q.insert_channel_record(conn, row)}
            q.put_channel_records(
                conn, [row for key in inserted for row in followers.get(key, ())] + always
            )
            return inserted

        if not rows and not always:
            return set()
        return await self._run(work)

    async def change_channel_record(
        self,
        channel: str,
        kind: str,
        key: str,
        change: Callable[[ChannelRecord | None], Sequence[ChannelRecord]],
    ) -> list[ChannelRecord]:
        def work(conn: Conn) -> list[ChannelRecord]:
            # The advisory lock serializes changes of a record that may not exist yet; the
            # row lock makes a concurrent delete wait for this change's commit (or this
            # change, started after it, find nothing).
            q.lock(conn, "channel-record", channel, kind, key)
            row = conn.execute(
                f"SELECT {q.CHANNEL_RECORD_COLUMNS} FROM channel_records"  # noqa: S608 - a constant column list
                " WHERE channel = %s AND kind = %s AND key = %s FOR UPDATE",
                (channel, kind, key),
            ).fetchone()
            current = table_rows.channel_record_from_row(row) if row is not None else None
            made = list(change(current))
            q.put_channel_records(conn, [table_rows.channel_record_row(r) for r in made])
            return made

        return await self._run(work)

    async def get_channel_record(self, channel: str, kind: str, key: str) -> ChannelRecord | None:
        def work(conn: Conn) -> ChannelRecord | None:
            row = conn.execute(
                f"SELECT {q.CHANNEL_RECORD_COLUMNS} FROM channel_records"  # noqa: S608 - a constant column list
                " WHERE channel = %s AND kind = %s AND key = %s",
                (channel, kind, key),
            ).fetchone()
            return table_rows.channel_record_from_row(row) if row is not None else None

        return await self._run(work)

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
        # A prefix range instead of LIKE: it uses the primary key and needs no escaping.
        clauses = ["channel = %s", "kind = %s", "key >= %s"]
        params: list[Any] = [channel, kind, prefix]
        if prefix:
            clauses.append("key < %s")
            params.append(prefix + "\U0010ffff")
        if after is not None:
            clauses.append("key < %s" if descending else "key > %s")
            params.append(after)
        order = "DESC" if descending else "ASC"
        # Built from constant fragments only; every value is a bound parameter.
        where = " AND ".join(clauses)
        sql = (
            f"SELECT {q.CHANNEL_RECORD_COLUMNS} FROM channel_records"  # noqa: S608 - constant fragments
            f" WHERE {where} ORDER BY key {order} LIMIT %s"
        )
        params.append(limit)

        def work(conn: Conn) -> list[ChannelRecord]:
            return [table_rows.channel_record_from_row(row) for row in conn.execute(sql, params)]

        return await self._run(work)

    async def list_channel_record_owners(
        self, channel: str, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[tuple[str, str | None]]:
        params: tuple[object, ...]
        if after is None:  # from the first key, even ""
            sql, params = q.LIST_CHANNEL_RECORD_OWNERS_FROM_START, (channel, kind, limit)
        else:
            sql, params = q.LIST_CHANNEL_RECORD_OWNERS_AFTER, (channel, kind, after, limit)

        def work(conn: Conn) -> list[tuple[str, str | None]]:
            return [(row[0], row[1]) for row in conn.execute(sql, params)]

        return await self._run(work)

    async def delete_channel_records(self, channel: str, kind: str, *, prefix: str) -> int:
        def work(conn: Conn) -> int:
            cursor = conn.execute(
                "DELETE FROM channel_records WHERE channel = %s AND kind = %s"
                " AND key >= %s AND key < %s",
                (channel, kind, prefix, prefix + "\U0010ffff"),
            )
            return cursor.rowcount

        return await self._run(work)

    async def delete_expired_channel_records(self, now: float) -> int:
        def work(conn: Conn) -> int:
            cursor = conn.execute(
                "DELETE FROM channel_records WHERE expires_at IS NOT NULL AND expires_at <= %s",
                (now,),
            )
            return cursor.rowcount

        return await self._run(work)

    async def watch_deliveries(self, wake: Callable[[], None]) -> None:
        # One more connection, LISTENing. The wait runs in a worker thread in slices of
        # NOTIFY_WAIT seconds, so cancellation (the host stopping) lands within one slice.
        # A broken connection is reopened after a pause; meanwhile the workers' own
        # sweeps still find every due delivery, only later.
        if not self._checked:
            await self.open()
        channel = self._deliveries_channel
        while True:
            try:
                listener = await anyio.to_thread.run_sync(lambda: connect(self.dsn, self.schema))
            except psycopg.Error:
                log.warning("cannot listen for deliveries; retrying", exc_info=False)
                await anyio.sleep(RELISTEN_SECONDS)
                continue
            try:
                await anyio.to_thread.run_sync(_listen, listener, channel)
                while True:
                    heard = await anyio.to_thread.run_sync(_wait_for_notifies, listener)
                    if heard:
                        wake()
            except psycopg.Error:
                log.warning("lost the deliveries listener; reconnecting", exc_info=False)
                await anyio.sleep(RELISTEN_SECONDS)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(listener.close)

    # --- singletons -----------------------------------------------------------------

    async def acquire_singleton(self, name: str, holder: str, *, now: float, ttl: float) -> bool:
        # One statement: the row is taken, renewed by its holder, or taken over once
        # expired; a concurrent contender waits on the row and then finds it held.
        def work(conn: Conn) -> bool:
            row = conn.execute(
                "INSERT INTO singletons (name, holder, expires_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE singletons.holder = excluded.holder OR singletons.expires_at <= %s"
                " RETURNING 1",
                (name, holder, now + ttl, now),
            ).fetchone()
            return row is not None

        return await self._run(work)

    async def release_singleton(self, name: str, holder: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "DELETE FROM singletons WHERE name = %s AND holder = %s", (name, holder)
            )
        )

    async def delete_expired_singletons(self, now: float) -> int:
        return await self._run(
            lambda conn: (
                conn.execute("DELETE FROM singletons WHERE expires_at <= %s", (now,)).rowcount
            )
        )


def _insert_run(conn: Conn, record: RunRecord) -> None:
    if not q.insert_run(conn, record):
        raise ValueError(f"a run with token {record.token!r} exists")


def _notify_channel(schema: str) -> str:
    # Schemas on one database are separate deployments: each outbox has its own channel
    # (an identifier: at most 63 bytes).
    return f"agenthost_deliveries.{schema}"[:63]


def _listen(listener: Conn, channel: str) -> None:
    listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def _wait_for_notifies(listener: Conn) -> int:
    """Notifications heard within one slice (at most a batch: they all mean "look")."""
    return sum(1 for _ in listener.notifies(timeout=NOTIFY_WAIT, stop_after=64))


def _alias_key(scope: ScopeKey) -> tuple[str, str]:
    if scope.owner is None:
        raise ValueError("an alias scope needs its owner")
    return (scope.owner, scope.qualifier)


def _decide_opening(
    conn: Conn, plan: opening.Opening, *, lock: bool
) -> tuple[opening.Outcome, opening.Writes]:
    """Load what ``opening.decide`` needs for ``plan`` and decide (nothing written).

    With ``lock``, in a transaction that writes what it decides: the locks are taken in the
    one order (identity, alias, lease), each before the reads that depend on it, so what
    ``decide`` sees is still true when its writes land. Two round trips: the first sends,
    pipelined, the identity's lock, the alias's, and the context query taking the lease's
    lock (each its own statement, so each read sees what the lock holder committed); the
    second reads the lease and the session. Without ``lock``, the same reads, for a
    decision that is kept only when it writes nothing (``opening`` rule 5).
    """
    scope = plan.scope
    needs_facts = plan.access.needs_facts
    if lock:
        with conn.pipeline():
            q.lock_identity(conn, plan.identity)
            if scope is not None:
                q.lock_scope_alias(conn, plan.identity, scope)
            context = q.load_context(conn, plan.identity, scope, needs_facts, lock_lease=True)
    else:
        context = q.load_context(conn, plan.identity, scope, needs_facts)
    alias = context.alias
    if context.isolation_key is None and scope is not None and scope.owner:
        # A shared scope names its owner: its alias exists without this key.
        alias = q.select_alias(conn, scope.owner, scope.qualifier)
        if alias is not None and lock:
            q.lock_lease(conn, alias.session_id)
    lease = session = None
    if alias is not None:
        lease, session = q.select_lease_and_session(conn, alias.session_id)
    loaded = opening.Loaded(context.isolation_key, alias, context.facts, lease, session)
    key = context.isolation_key
    # A retried fork finds the session its first try made; a private key (``opening``
    # rule 5) has none before its turn's save.
    if plan.fork_scope is not None and key is not None and not plan.create_at_finish:
        q.lock_alias(conn, key, plan.fork_scope.qualifier)
        fork = q.select_alias(conn, key, plan.fork_scope.qualifier)
        if fork is not None:
            q.lock_lease(conn, fork.session_id)
            fork_lease, fork_session = q.select_lease_and_session(conn, fork.session_id)
            loaded = attrs.evolve(
                loaded, fork_alias=fork, fork_lease=fork_lease, fork_session=fork_session
            )
    return opening.decide(plan, loaded)


def _finish_creation(
    conn: Conn,
    creation: opening.Creation,
    run_id: str,
    session: SessionRecord | None,
    now: float,
) -> bool:
    """In the save's transaction: create the session the opening left to it (``opening``
    rule 5), with the turn's ``session`` when it has one, and its lease released. Nobody
    else can name it yet, so it takes no lock; the alias's unique key settles a race."""
    alias = creation.alias
    new_state, decision = leases.release(creation.lease, run_id, now)
    if not isinstance(decision, leases.Released):  # pragma: no cover - the turn holds it
        return False
    if not q.insert_alias_if_absent(conn, alias):
        return False  # the key was not private after all: the existing session stays
    with conn.pipeline():
        q.write_session(conn, alias.session_id, session if session is not None else creation.record)
        q.write_lease(conn, alias.session_id, new_state)
    return session is not None
