"""The SQLite store: the default, one file under ``./.agenthost/``, kept across restarts.

It owns the SQL schema, its version and its migrations, and nothing else: every change that
needs a decision (a lease step, a run transition, a session rotation) loads the record inside
one ``BEGIN IMMEDIATE`` transaction, calls the pure function from ``agenthost.sansio_core``
and writes what it returns. Records are JSON written by ``stores.codec``; pickle is never used.

The driver is synchronous. Work goes through :mod:`agenthost.stores.group_commit`: the
calls that arrive while a batch runs go out together, in one worker-thread hop and one
``BEGIN IMMEDIATE`` transaction with a savepoint per call, answered after its commit. So the
store runs under asyncio and trio alike, never shares the connection between threads at
once, and a busy host pays one hop and one commit for many calls. ``BEGIN IMMEDIATE`` and
the busy timeout keep other processes on the same file (other replicas, the CLI) correct.

The store opens itself on first use; call :meth:`SQLiteStore.open` at start-up to have schema
problems raised there, loudly.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
from agenthost.stores import codec, session_states
from agenthost.stores.base import (
    SCHEMA_VERSION,
    ChannelRecord,
    DeliveryNotFound,
    DeliveryStepAnswer,
    FinishedTurn,
    RunNotFound,
    Store,
    StoreSchemaError,
    TurnWrites,
    apply_delivery_steps,
    run_refusal_reason,
)
from agenthost.stores.group_commit import GroupCommit, WorkItem
from agenthost.stores.rows import (
    SESSION_COLUMNS,
    alias_from_row,
    channel_record_from_row,
    channel_record_row,
    delivery_row,
    facts_from_json,
    link_from_row,
    run_row,
    session_columns,
    session_from_row,
)
from agenthost.stores.session_states import KeptLeases, SessionStates, StateWrite
from agenthost.stores.wal_checkpoints import WalCheckpointer

T = TypeVar("T")

DEFAULT_PATH = ".agenthost/state.db"
BUSY_TIMEOUT_MS = 5_000

Migration = Callable[[sqlite3.Connection], None]


def _add_idle_state_expiry(conn: sqlite3.Connection) -> None:
    """2 -> 3: which sessions' states expire when idle (``Store.expire_idle_states``).

    Sessions saved before the upgrade are not marked: their next saved turn marks them.
    """
    conn.execute(
        "ALTER TABLE sessions ADD COLUMN state_expires_when_idle INTEGER NOT NULL DEFAULT 0"
    )
    # Only the marked sessions are indexed, by the time they were saved: the sweep's range.
    conn.execute(
        "CREATE INDEX sessions_expiring_when_idle ON sessions (updated_at)"
        " WHERE state_expires_when_idle = 1"
    )


# Version N -> the function that upgrades a version-N database to N+1. ``open`` applies them
# in order, in the same transaction that records the new version. Never edit a released one:
# add the next. A new database is created at version 1 and migrated like any other.
MIGRATIONS: dict[int, Migration] = {}


def _add_singletons(conn: sqlite3.Connection) -> None:
    """1 -> 2: named leases in the file, so processes sharing it elect one holder (one
    Telegram poller per bot) as PostgreSQL replicas do."""
    conn.execute(
        """
        CREATE TABLE singletons (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at REAL NOT NULL
        )
        """
    )


def _add_state_tails(conn: sqlite3.Connection) -> None:
    """3 -> 4: session states as a head and appended tails (``stores.session_states``).

    States saved before the upgrade are read as heads without tails, and written in the new
    layout by their next save.
    """
    conn.execute("ALTER TABLE sessions ADD COLUMN state_tag TEXT")
    conn.execute("ALTER TABLE sessions ADD COLUMN state_tails INTEGER NOT NULL DEFAULT 0")
    # Clustered by session: a state's tails are read, and deleted, as one range.
    conn.execute(
        """
        CREATE TABLE session_state_tails (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            path TEXT NOT NULL,
            items TEXT NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID
        """
    )


MIGRATIONS[1] = _add_singletons
MIGRATIONS[2] = _add_idle_state_expiry
MIGRATIONS[3] = _add_state_tails

_SCHEMA_V1 = (
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE identities (
        channel TEXT NOT NULL,
        native_id TEXT NOT NULL,
        isolation_key TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (channel, native_id)
    )
    """,
    # The members of a user (facts, merges) are found by key.
    "CREATE INDEX identities_by_key ON identities (isolation_key)",
    """
    CREATE TABLE identity_claims (
        channel TEXT NOT NULL,
        native_id TEXT NOT NULL,
        claim_type TEXT NOT NULL,
        claim_value TEXT NOT NULL,
        source TEXT NOT NULL,
        verified_at REAL NOT NULL,
        PRIMARY KEY (channel, native_id, claim_type, claim_value)
    )
    """,
    # (claim_type, claim_value) -> the identities holding it, and through them the key.
    "CREATE INDEX identity_claims_by_claim ON identity_claims (claim_type, claim_value)",
    """
    CREATE TABLE links (
        channel TEXT NOT NULL,
        native_id TEXT NOT NULL,
        isolation_key TEXT NOT NULL,
        anchor_channel TEXT NOT NULL,
        anchor_native_id TEXT NOT NULL,
        source TEXT NOT NULL,
        previous_key TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (channel, native_id)
    )
    """,
    "CREATE INDEX links_by_key ON links (isolation_key, created_at)",
    """
    CREATE TABLE link_challenges (
        locator TEXT PRIMARY KEY,
        issuer_channel TEXT NOT NULL,
        issuer_native_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        record TEXT NOT NULL
    )
    """,
    # One live code per issuer: a new one replaces the old.
    """
    CREATE UNIQUE INDEX link_challenges_by_issuer
        ON link_challenges (issuer_channel, issuer_native_id)
    """,
    "CREATE INDEX link_challenges_by_expiry ON link_challenges (expires_at)",
    """
    CREATE TABLE link_attempts (
        scope TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,
        record TEXT NOT NULL
    )
    """,
    "CREATE INDEX link_attempts_by_expiry ON link_attempts (expires_at)",
    """
    CREATE TABLE session_aliases (
        owner TEXT NOT NULL,
        qualifier TEXT NOT NULL,
        session_id TEXT NOT NULL,
        generation INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (owner, qualifier)
    )
    """,
    """
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        qualifier TEXT NOT NULL,
        generation INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        turns INTEGER NOT NULL,
        state TEXT
    )
    """,
    # list_sessions filters on owner and sorts by the rest: the index serves both.
    "CREATE INDEX sessions_by_owner ON sessions (owner, created_at, generation, session_id)",
    """
    CREATE TABLE session_leases (
        session_id TEXT PRIMARY KEY,
        state TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE runs (
        token TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        lease_expires_at REAL,
        record TEXT NOT NULL
    )
    """,
    "CREATE INDEX runs_by_status ON runs (status, created_at, token)",
    "CREATE INDEX runs_by_expiry ON runs (expires_at)",
    """
    CREATE TABLE channel_records (
        channel TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        owner TEXT,
        created_at REAL NOT NULL,
        expires_at REAL,
        value TEXT NOT NULL,
        PRIMARY KEY (channel, kind, key)
    )
    """,
    "CREATE INDEX channel_records_by_expiry ON channel_records (expires_at)",
    # One row per (identity, conversation); '' stands for "no conversation" (a NULL in a
    # primary key would not be unique). ``isolation_key`` is the key it was recorded under:
    # reads follow the identity's current key, so links and unlinks carry the rows along.
    """
    CREATE TABLE last_seen (
        channel TEXT NOT NULL,
        native_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        isolation_key TEXT NOT NULL,
        seen_at REAL NOT NULL,
        identity TEXT NOT NULL,
        PRIMARY KEY (channel, native_id, conversation_id)
    )
    """,
    "CREATE INDEX last_seen_by_key ON last_seen (isolation_key)",
    # The outbox: the id is the idempotency key. Claims scan (status, next_attempt_at).
    """
    CREATE TABLE deliveries (
        delivery_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        record TEXT NOT NULL
    )
    """,
    "CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)",
    "CREATE INDEX deliveries_by_update ON deliveries (status, updated_at)",
    "CREATE INDEX deliveries_by_age ON deliveries (created_at, delivery_id)",
)


class SQLiteStore(Store):
    """The store contract on one SQLite file (WAL, schema-versioned)."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self._writer: GroupCommit[sqlite3.Connection] = GroupCommit(
            self._run_batch, run_inline=self._run_batch_inline
        )
        self._conn: sqlite3.Connection | None = None
        self._busy_timeout_ms: int | None = None  # as last set on ``_conn``
        self._checkpoints = WalCheckpointer(self.path)
        self._decoded = _DecodedDeliveries()

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(lambda conn: None)

    async def close(self) -> None:
        await self._writer.exclusive(self._close_sync)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the connection in the next batch, opening the store if needed."""
        return await self._writer.submit(work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`_run` for ``work`` that only reads: when its whole batch only reads, the
        batch's transaction takes no write lock and its commit writes nothing."""
        return await self._writer.submit(work, read_only=True)

    def _run_batch(self, batch: Sequence[WorkItem[sqlite3.Connection]]) -> None:
        """In the worker thread: one transaction for the whole batch, waiting for the write
        lock as long as the busy timeout allows (see group_commit)."""
        try:
            if self._conn is None:
                self._conn = self._open_sync()
            conn = self._conn
            self._set_busy_timeout(conn, BUSY_TIMEOUT_MS)
            conn.execute(_begin(batch))
        except Exception as exc:
            _fail(batch, exc)
            return
        _commit_batch(conn, batch, self._checkpoints.committed)

    def _run_batch_inline(self, batch: Sequence[WorkItem[sqlite3.Connection]]) -> bool:
        """On the event loop: the same transaction, when the write lock is free right now.

        A batch of a few small statements takes less time than the hop to a worker thread
        and back, which on a busy machine waits for the thread to be scheduled. Answers
        ``False`` (having done nothing) when the store is not open yet or another process
        holds the lock: the batch then goes to the thread, which may wait for it.
        """
        conn = self._conn
        if conn is None:
            return False
        try:
            self._set_busy_timeout(conn, 0)
            conn.execute(_begin(batch))
        except sqlite3.OperationalError:
            return False
        _commit_batch(conn, batch, self._checkpoints.committed)
        return True

    def _set_busy_timeout(self, conn: sqlite3.Connection, milliseconds: int) -> None:
        """Set how long ``BEGIN IMMEDIATE`` waits for another process's lock, when that
        changed: the inline path never waits, the thread does. A pragma costs as much as a
        small write, and an idle host would pay it on every store call."""
        if self._busy_timeout_ms != milliseconds:
            conn.execute(f"PRAGMA busy_timeout = {milliseconds}")
            self._busy_timeout_ms = milliseconds

    def _close_sync(self) -> None:
        self._checkpoints.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._busy_timeout_ms = None

    def _open_sync(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, factory=_Connection
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # WalCheckpointer's job
            # A batch runs each item under a savepoint, and SQLite keeps the pages an item
            # changes in a statement journal until its RELEASE: in memory, not in a temp
            # file written with a system call per page (~24 KB a Responses create).
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA foreign_keys = ON")
            with _transaction(conn):
                self._prepare_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare_schema(self, conn: sqlite3.Connection) -> None:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if has_meta is None:
            if conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None:
                raise StoreSchemaError(
                    f"{self.path} is an SQLite database but not an agenthost store (it has no "
                    "meta table); point the store at another file"
                )
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            _write_version(conn, 1)
        found = self._stored_version(conn)
        if found > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"{self.path} holds agenthost store schema version {found}, but this agenthost "
                f"supports schema version {SCHEMA_VERSION} at most; upgrade agenthost to a "
                "release that knows this schema (a newer one wrote this file)"
            )
        missing = [v for v in range(found, SCHEMA_VERSION) if v not in MIGRATIONS]
        if missing:
            raise StoreSchemaError(
                f"{self.path} holds agenthost store schema version {found}, and this agenthost "
                f"(schema version {SCHEMA_VERSION}) has no migration from version {missing[0]}; "
                "the installed agenthost is incomplete: reinstall it"
            )
        for version in range(found, SCHEMA_VERSION):
            try:
                MIGRATIONS[version](conn)
            except Exception as exc:
                raise StoreSchemaError(
                    f"migrating {self.path} from schema version {version} to {version + 1} "
                    f"failed ({exc!r}); the file was left at version {found}, unchanged"
                ) from exc
            _write_version(conn, version + 1)

    def _stored_version(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise StoreSchemaError(
                f"{self.path} has no readable schema_version in its meta table "
                f"(found {row!r}); it was not written by agenthost or was damaged"
            ) from None

    # --- identities -----------------------------------------------------------------

    async def load_context(
        self, identity: ChannelIdentity, scope: ScopeKey | None, *, facts: bool = False
    ) -> RequestContext:
        return await self._run(lambda conn: _load_context(conn, identity, scope, facts))

    async def issue_isolation_key(
        self, identity: ChannelIdentity, candidate: str, now: float
    ) -> str:
        def work(conn: sqlite3.Connection) -> str:
            with _transaction(conn):
                _insert_identity_if_absent(conn, identity, candidate, now)
                row = conn.execute(
                    "SELECT isolation_key FROM identities WHERE channel = ? AND native_id = ?",
                    (identity.channel, identity.native_id),
                ).fetchone()
            key: str = row[0]
            return key

        return await self._run(work)

    # --- links and verified claims --------------------------------------------------

    async def load_facts(self, identity: ChannelIdentity) -> UserFacts | None:
        context = await self.load_context(identity, None, facts=True)
        return context.facts if context.isolation_key is not None else None

    async def list_identities(self, isolation_key: str) -> list[ChannelIdentity]:
        return await self._run(lambda conn: list(_members(conn, isolation_key)))

    async def list_links(self, isolation_key: str) -> list[LinkRecord]:
        def work(conn: sqlite3.Connection) -> list[LinkRecord]:
            rows = conn.execute(
                "SELECT channel, native_id, isolation_key, anchor_channel, anchor_native_id,"
                " source, previous_key, created_at FROM links WHERE isolation_key = ?"
                " ORDER BY created_at, channel, native_id",
                (isolation_key,),
            ).fetchall()
            return [link_from_row(row) for row in rows]

        return await self._run(work)

    async def link_identities(
        self,
        anchor: ChannelIdentity,
        moving: ChannelIdentity,
        rules: LinkRules,
        *,
        source: str,
        now: float,
    ) -> LinkResult:
        def work(conn: sqlite3.Connection) -> LinkResult:
            with _transaction(conn):
                anchor_user = _user(conn, anchor)
                moving_user = _user(conn, moving)
                if anchor_user.isolation_key is None:
                    return LinkResult(False, moving_user.isolation_key, LinkReason.NOT_LINKED)
                plan = linking.plan_merge(
                    anchor, anchor_user, moving, moving_user, rules, source=source, now=now
                )
                if isinstance(plan, LinkResult):
                    return plan
                _apply_merge(conn, plan, now)
                return LinkResult(True, plan.to_key, LinkReason.LINKED)

        return await self._run(work)

    async def unlink_identity(
        self, identity: ChannelIdentity, new_key: str, now: float
    ) -> LinkResult:
        def work(conn: sqlite3.Connection) -> LinkResult:
            with _transaction(conn):
                has_claims = conn.execute(
                    "SELECT 1 FROM identity_claims WHERE channel = ? AND native_id = ? LIMIT 1",
                    (identity.channel, identity.native_id),
                ).fetchone()
                plan = linking.plan_unlink(
                    identity, _user(conn, identity), has_claims=bool(has_claims), new_key=new_key
                )
                if isinstance(plan, LinkResult):
                    return plan
                _set_key(conn, identity, plan.to_key, now)
                _forget_claims(conn, identity, source=None)
                conn.execute(
                    "DELETE FROM links WHERE channel = ? AND native_id = ?",
                    (identity.channel, identity.native_id),
                )
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
        def work(conn: sqlite3.Connection) -> LinkResult:
            with _transaction(conn):
                _insert_identity_if_absent(conn, identity, candidate_key, now)
                rows = conn.execute(
                    "SELECT channel, native_id FROM identity_claims"
                    " WHERE claim_type = ? AND claim_value = ? ORDER BY channel, native_id",
                    (linking.SUBJECT_CLAIM, claims.subject),
                ).fetchall()
                holders = [
                    (holder, _user(conn, holder))
                    for holder in (ChannelIdentity(channel, native) for channel, native in rows)
                ]
                decision = linking.plan_claims_link(
                    identity,
                    _user(conn, identity),
                    holders,
                    rules,
                    source=linking.claims_source(claims.source),
                    now=now,
                )
                if decision.merge is not None:
                    _apply_merge(conn, decision.merge, now)
                if decision.record:
                    _forget_claims(conn, identity, source=claims.source)
                    conn.executemany(
                        "INSERT OR REPLACE INTO identity_claims (channel, native_id,"
                        " claim_type, claim_value, source, verified_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (identity.channel, identity.native_id, kind, value, claims.source, now)
                            for kind, value in claims.rows()
                        ],
                    )
                return decision.result

        return await self._run(work)

    # --- one-time link codes --------------------------------------------------------

    async def put_link_challenge(self, challenge: CodeChallenge) -> bool:
        issuer = challenge.issuer

        def work(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                taken = conn.execute(
                    "SELECT issuer_channel, issuer_native_id FROM link_challenges"
                    " WHERE locator = ?",
                    (challenge.locator,),
                ).fetchone()
                if taken is not None and tuple(taken) != (issuer.channel, issuer.native_id):
                    return False
                conn.execute(
                    "DELETE FROM link_challenges WHERE issuer_channel = ? AND issuer_native_id = ?",
                    (issuer.channel, issuer.native_id),
                )
                _write_challenge(conn, challenge)
                return True

        return await self._run(work)

    async def get_link_challenge(self, locator: str) -> CodeChallenge | None:
        return await self._run(lambda conn: _select_challenge(conn, locator))

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
        def work(conn: sqlite3.Connection) -> LinkResult:
            with _transaction(conn):
                challenge = _select_challenge(conn, locator)
                outcome = link_codes.decide_attempt(
                    challenge=challenge,
                    identity_counter=_select_counter(conn, link_codes.identity_scope(completer)),
                    global_counter=_select_counter(conn, link_codes.GLOBAL_SCOPE),
                    completer=completer,
                    secret=secret,
                    now=now,
                    limits=limits,
                    completer_user=_user(conn, completer),
                    issuer_user=_user(conn, challenge.issuer) if challenge is not None else None,
                    rules=rules,
                )
                if outcome.challenge is not None:
                    _write_challenge(conn, outcome.challenge)
                _write_counter(conn, outcome.identity_counter)
                _write_counter(conn, outcome.global_counter)
                if outcome.merge is not None:
                    _apply_merge(conn, outcome.merge, now)
                return outcome.result

        return await self._run(work)

    async def get_attempt_counter(self, scope: str) -> AttemptCounter:
        return await self._run(lambda conn: _select_counter(conn, scope))

    async def delete_expired_link_records(self, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                # The indexes narrow the candidates; the core decides what has expired.
                rows = conn.execute(
                    "SELECT record FROM link_challenges WHERE expires_at <= ?", (now,)
                ).fetchall()
                doomed = [
                    challenge.locator
                    for challenge in (codec.load(row[0], CodeChallenge) for row in rows)
                    if link_codes.is_expired(challenge, now)
                ]
                conn.executemany(
                    "DELETE FROM link_challenges WHERE locator = ?", [(x,) for x in doomed]
                )
                rows = conn.execute(
                    "SELECT record FROM link_attempts WHERE expires_at <= ?", (now,)
                ).fetchall()
                idle = [
                    counter.scope
                    for counter in (codec.load(row[0], AttemptCounter) for row in rows)
                    if link_codes.counter_is_expired(counter, now)
                ]
                conn.executemany("DELETE FROM link_attempts WHERE scope = ?", [(x,) for x in idle])
                return len(doomed) + len(idle)

        return await self._run(work)

    # --- sessions -------------------------------------------------------------------

    async def load_alias(self, scope: ScopeKey) -> SessionAlias | None:
        owner, qualifier = _alias_key(scope)
        return await self._run(lambda conn: _select_alias(conn, owner, qualifier))

    async def create_session(self, alias: SessionAlias, now: float) -> SessionAlias:
        def work(conn: sqlite3.Connection) -> SessionAlias:
            with _transaction(conn):
                existing = _select_alias(conn, alias.owner, alias.qualifier)
                if existing is not None:
                    return existing
                _write_alias(conn, alias)
                _write_session(
                    conn, alias.session_id, sessions.new_session_record(alias, now), fresh=True
                )
                return alias

        return await self._run(work)

    async def fork_session(
        self, source_session_id: str, alias: SessionAlias, now: float
    ) -> SessionAlias:
        def work(conn: sqlite3.Connection) -> SessionAlias:
            with _transaction(conn):
                existing = _select_alias(conn, alias.owner, alias.qualifier)
                if existing is not None:
                    return existing
                source = _select_session(conn, source_session_id)
                _write_alias(conn, alias)
                _write_session(
                    conn, alias.session_id, sessions.forked_record(source, alias, now), fresh=True
                )
                return alias

        return await self._run(work)

    async def rotate_session(
        self, scope: ScopeKey, new_session_id: str, now: float
    ) -> SessionAlias:
        owner, qualifier = _alias_key(scope)

        def work(conn: sqlite3.Connection) -> SessionAlias:
            with _transaction(conn):
                current = _select_alias(conn, owner, qualifier)
                alias = sessions.rotate(scope, current, new_session_id=new_session_id, now=now)
                _write_alias(conn, alias)
                _write_session(
                    conn, alias.session_id, sessions.new_session_record(alias, now), fresh=True
                )
                return alias

        return await self._run(work)

    async def load_session(self, session_id: str) -> SessionRecord | None:
        return await self._run(lambda conn: _select_session(conn, session_id))

    async def list_sessions(self, owner: str) -> list[SessionRecord]:
        def work(conn: sqlite3.Connection) -> list[SessionRecord]:
            rows = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE owner = ?"  # noqa: S608 - a constant column list
                " ORDER BY created_at, generation, session_id",
                (owner,),
            ).fetchall()
            return [_session_from_row(conn, row, keep=False) for row in rows]

        return await self._run(work)

    async def expire_idle_states(self, now: float, ttl: float, limit: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                # The index narrows the candidates (without reading their states); the core
                # decides, with each one's lease, read in the same write transaction.
                rows = conn.execute(
                    "SELECT s.session_id, s.state_expires_when_idle, s.updated_at, l.state"
                    " FROM sessions AS s"
                    " LEFT JOIN session_leases AS l ON l.session_id = s.session_id"
                    " WHERE s.state_expires_when_idle = 1 AND s.updated_at <= ?"
                    " ORDER BY s.updated_at LIMIT ?",
                    (now - ttl, limit),
                ).fetchall()
                doomed = [
                    (session_id,)
                    for session_id, expiring, saved_at, lease in rows
                    if sessions.idle_state_expired(
                        expires_when_idle=bool(expiring),
                        saved_at=saved_at,
                        lease=codec.load_lease(lease) if lease is not None else None,
                        now=now,
                        ttl=ttl,
                    )
                ]
                conn.executemany(
                    "UPDATE sessions SET state = NULL, state_tag = NULL, state_tails = 0,"
                    " state_expires_when_idle = 0 WHERE session_id = ?",
                    doomed,
                )
                conn.executemany(_DELETE_TAILS, doomed)
                return len(doomed)

        return await self._run(work)

    # --- session leases -------------------------------------------------------------

    async def open_turn(self, plan: opening.Opening) -> opening.Outcome:
        if plan.create_at_finish:
            # Decided on a read first: when it writes nothing (the session is created by
            # the turn's save, ``opening`` rule 5) the turn needs no write transaction here.
            decided = await self._read(lambda conn: _decide_opening(conn, plan))
            if decided[1].empty:
                return decided[0]

        def work(conn: sqlite3.Connection) -> opening.Outcome:
            with _transaction(conn):
                outcome, writes = _decide_opening(conn, plan)
                if writes.issue_key is not None:
                    _insert_identity_if_absent(conn, plan.identity, writes.issue_key, plan.now)
                if writes.last_seen is not None:
                    _upsert_last_seen(conn, *writes.last_seen)
                if writes.create is not None:
                    created, record = writes.create
                    _write_alias(conn, created)
                    _write_session(conn, created.session_id, record, fresh=True)
                if writes.lease is not None:
                    _write_lease(conn, writes.lease.session_id, writes.lease)
                if writes.run is not None:
                    _insert_run(conn, writes.run)
                return outcome

        return await self._run(work)

    async def apply_lease_event(self, session_id: str, event: leases.LeaseEvent) -> LeaseAnswer:
        def work(conn: sqlite3.Connection) -> LeaseAnswer:
            with _transaction(conn):
                state = _select_lease(conn, session_id)
                new_state, decision = leases.apply(state, event)
                _write_lease(conn, session_id, new_state)
                session = None
                if isinstance(decision, leases.Granted):
                    session = _select_session(conn, session_id)
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
        def work(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                return _finish_run(conn, session_id, run_id, session, now, creation)

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
        delivery_rows = [delivery_row(d) for d in writes.deliveries]
        record_rows = [channel_record_row(r) for r in writes.channel_records]

        def work(conn: sqlite3.Connection) -> FinishedTurn:
            with _transaction(conn):
                # Checked first, so a refused transition changes nothing of the run's writes.
                run, refused = None, None
                if writes.run_event is not None:
                    token, event = writes.run_event
                    try:
                        run = _apply_run_event(conn, token, event)
                    except (background.RunTransitionRefused, RunNotFound) as exc:
                        refused = run_refusal_reason(exc)
                saved = False
                if session_id is not None:
                    saved = _finish_run(conn, session_id, run_id, session, now, creation)
                if refused is None and delivery_rows:
                    _insert_deliveries(conn, delivery_rows)
                if record_rows:
                    _put_channel_records(conn, record_rows)
                return FinishedTurn(saved, run, refused)

        return await self._run(work)

    async def create_run(self, record: RunRecord) -> None:
        await self._run(lambda conn: _insert_run(conn, record))

    async def get_run(self, token: str) -> RunRecord | None:
        return await self._run(lambda conn: _select_run(conn, token))

    async def apply_run_event(self, token: str, event: RunEvent) -> RunRecord:
        def work(conn: sqlite3.Connection) -> RunRecord:
            with _transaction(conn):
                return _apply_run_event(conn, token, event)

        return await self._run(work)

    async def list_runs(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        wanted = sorted({status.value for status in statuses})
        if not wanted:
            return []

        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            marks = ", ".join("?" * len(wanted))
            rows = conn.execute(
                f"SELECT record FROM runs WHERE status IN ({marks}) ORDER BY created_at, token",  # noqa: S608 - only placeholders are interpolated
                wanted,
            ).fetchall()
            return [codec.load_run(row[0]) for row in rows]

        return await self._run(work)

    async def delete_expired_runs(self, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                # The index narrows the candidates; the core still decides what has expired.
                rows = conn.execute(
                    "SELECT record FROM runs WHERE expires_at <= ?", (now,)
                ).fetchall()
                expired = [
                    record.token
                    for record in (codec.load_run(row[0]) for row in rows)
                    if background.is_expired(record, now)
                ]
                conn.executemany("DELETE FROM runs WHERE token = ?", [(t,) for t in expired])
                return len(expired)

        return await self._run(work)

    # --- last seen ------------------------------------------------------------------

    async def record_last_seen(self, isolation_key: str, seen: LastSeen) -> None:
        await self._run(lambda conn: _upsert_last_seen(conn, isolation_key, seen))

    async def list_last_seen(self, isolation_key: str) -> list[LastSeen]:
        def work(conn: sqlite3.Connection) -> list[LastSeen]:
            rows = conn.execute(_LIST_LAST_SEEN, {"key": isolation_key}).fetchall()
            return [
                LastSeen(channel, codec.load(identity, ChannelIdentity), conv or None, seen_at)
                for channel, conv, seen_at, identity, _ in rows
            ]

        return await self._run(work)

    # --- the delivery outbox --------------------------------------------------------

    async def complete_run_with_deliveries(
        self, token: str, event: RunEvent, deliveries: Sequence[Delivery]
    ) -> RunRecord:
        rows = [delivery_row(d) for d in deliveries]

        def work(conn: sqlite3.Connection) -> RunRecord:
            with _transaction(conn):
                new = _apply_run_event(conn, token, event)
                _insert_deliveries(conn, rows)
                return new

        return await self._run(work)

    async def schedule_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        rows = [delivery_row(d) for d in deliveries]

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                _insert_deliveries(conn, rows)

        if rows:
            await self._run(work)

    async def claim_due_deliveries(
        self, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        decoded = self._decoded
        claim = delivery.Claim(owner, now, lease_seconds)

        def work(conn: sqlite3.Connection) -> list[Delivery]:
            with _transaction(conn):
                rows = conn.execute(
                    "SELECT delivery_id, record FROM deliveries"
                    " WHERE status IN ('scheduled', 'failed') AND next_attempt_at <= ?"
                    " ORDER BY next_attempt_at, created_at, delivery_id LIMIT ?",
                    (now, limit),
                ).fetchall()
                claimed = []
                for delivery_id, record in rows:
                    found = decoded.load(delivery_id, record)
                    if not found.is_due(now):  # the index narrows; the core decides
                        continue
                    claimed.append(delivery.apply(found, claim))
                conn.executemany(_UPDATE_DELIVERY, [decoded.update_row(d) for d in claimed])
                return claimed

        return await self._run(work)

    async def apply_delivery_event(self, delivery_id: str, event: DeliveryEvent) -> Delivery:
        decoded = self._decoded

        def work(conn: sqlite3.Connection) -> Delivery:
            with _transaction(conn):
                found = _select_delivery(conn, decoded, delivery_id)
                if found is None:
                    raise DeliveryNotFound(delivery_id)
                new = delivery.apply(found, event)
                conn.execute(_UPDATE_DELIVERY, decoded.update_row(new))
                return new

        return await self._run(work)

    async def apply_delivery_events(
        self, steps: Sequence[tuple[str, DeliveryEvent]]
    ) -> list[DeliveryStepAnswer]:
        steps = list(steps)
        decoded = self._decoded

        def work(conn: sqlite3.Connection) -> list[DeliveryStepAnswer]:
            with _transaction(conn):
                ids = {delivery_id for delivery_id, _ in steps}
                named = _select_deliveries(conn, decoded, ids)
                answers, changed = apply_delivery_steps(named, steps)
                rows = [decoded.update_row(d) for d in changed.values()]
                conn.executemany(_UPDATE_DELIVERY, rows)
                return answers

        return await self._run(work) if steps else []

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        return await self._run(lambda conn: _select_delivery(conn, self._decoded, delivery_id))

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

        order = "DESC" if newest_first else "ASC"
        decoded = self._decoded

        def work(conn: sqlite3.Connection) -> list[Delivery]:
            marks = ", ".join("?" * len(wanted))
            rows = conn.execute(
                f"SELECT delivery_id, record FROM deliveries WHERE status IN ({marks})"  # noqa: S608 - only placeholders and a fixed order are interpolated
                f" ORDER BY created_at {order}, delivery_id {order} LIMIT ?",
                (*wanted, limit),
            ).fetchall()
            return [decoded.load(delivery_id, record) for delivery_id, record in rows]

        return await self._run(work)

    async def next_delivery_due(self) -> float | None:
        def work(conn: sqlite3.Connection) -> float | None:
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

        def work(conn: sqlite3.Connection) -> int:
            marks = ", ".join("?" * len(wanted))
            with _transaction(conn):
                cursor = conn.execute(
                    f"DELETE FROM deliveries WHERE status IN ({marks}) AND updated_at <= ?",  # noqa: S608 - only placeholders are interpolated
                    (*wanted, cutoff),
                )
                return cursor.rowcount

        return await self._run(work)

    # --- channel records ------------------------------------------------------------

    async def put_channel_records(self, records: Sequence[ChannelRecord]) -> None:
        rows = [channel_record_row(r) for r in records]

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                _put_channel_records(conn, rows)

        if rows:
            await self._run(work)

    async def insert_channel_records(
        self,
        records: Sequence[ChannelRecord],
        *,
        companions: Mapping[str, Sequence[ChannelRecord]] | None = None,
        put: Sequence[ChannelRecord] = (),
    ) -> set[str]:
        rows = [channel_record_row(r) for r in records]
        followers = {
            key: [channel_record_row(r) for r in those] for key, those in (companions or {}).items()
        }
        always = [channel_record_row(r) for r in put]

        def work(conn: sqlite3.Connection) -> set[str]:
            inserted: set[str] = set()
            with _transaction(conn):
                for row in rows:
                    # An ignored insert changes no row (``changes()``, which rowcount reports).
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO channel_records (channel, kind, key, owner,"
                        " created_at, expires_at, value) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    if cursor.rowcount == 1:
                        inserted.add(row[2])
                more = [row for key in inserted for row in followers.get(key, ())] + always
                if more:
                    conn.executemany(
                        "INSERT OR REPLACE INTO channel_records (channel, kind, key, owner,"
                        " created_at, expires_at, value) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        more,
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
        # In the file's write lock, not in this object: processes sharing the file change
        # records too (an inbox take-over is a compare-and-set between replicas).
        def work(conn: sqlite3.Connection) -> list[ChannelRecord]:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT channel, kind, key, owner, created_at, expires_at, value"
                    " FROM channel_records WHERE channel = ? AND kind = ? AND key = ?",
                    (channel, kind, key),
                ).fetchone()
                made = list(change(channel_record_from_row(row) if row is not None else None))
                _put_channel_records(conn, [channel_record_row(r) for r in made])
                return made

        return await self._run(work)

    async def get_channel_record(self, channel: str, kind: str, key: str) -> ChannelRecord | None:
        def work(conn: sqlite3.Connection) -> ChannelRecord | None:
            row = conn.execute(
                "SELECT channel, kind, key, owner, created_at, expires_at, value"
                " FROM channel_records WHERE channel = ? AND kind = ? AND key = ?",
                (channel, kind, key),
            ).fetchone()
            return channel_record_from_row(row) if row is not None else None

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
        clauses = ["channel = ?", "kind = ?", "key >= ?"]
        params: list[Any] = [channel, kind, prefix]
        if prefix:
            clauses.append("key < ?")
            params.append(prefix + "\U0010ffff")
        if after is not None:
            clauses.append("key < ?" if descending else "key > ?")
            params.append(after)
        order = "DESC" if descending else "ASC"
        # Built from constant fragments only; every value is a bound parameter.
        where = " AND ".join(clauses)
        select = "SELECT channel, kind, key, owner, created_at, expires_at, value"
        sql = f"{select} FROM channel_records WHERE {where} ORDER BY key {order} LIMIT ?"
        params.append(limit)

        def work(conn: sqlite3.Connection) -> list[ChannelRecord]:
            return [channel_record_from_row(row) for row in conn.execute(sql, params)]

        return await self._run(work)

    async def list_channel_record_owners(
        self, channel: str, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[tuple[str, str | None]]:
        # The primary key (channel, kind, key) orders and bounds the scan; the value's text
        # is neither read nor decoded.
        past = "key >= ?" if after is None else "key > ?"  # from the first key, even ""
        sql = (
            "SELECT key, owner FROM channel_records"  # noqa: S608 - constant fragments
            f" WHERE channel = ? AND kind = ? AND {past} ORDER BY key LIMIT ?"
        )
        params = (channel, kind, "" if after is None else after, limit)

        def work(conn: sqlite3.Connection) -> list[tuple[str, str | None]]:
            return [(row[0], row[1]) for row in conn.execute(sql, params)]

        return await self._run(work)

    async def delete_channel_records(self, channel: str, kind: str, *, prefix: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                cursor = conn.execute(
                    "DELETE FROM channel_records WHERE channel = ? AND kind = ?"
                    " AND key >= ? AND key < ?",
                    (channel, kind, prefix, prefix + "\U0010ffff"),
                )
                return cursor.rowcount

        return await self._run(work)

    async def delete_expired_channel_records(self, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                cursor = conn.execute(
                    "DELETE FROM channel_records WHERE expires_at IS NOT NULL AND expires_at <= ?",
                    (now,),
                )
                return cursor.rowcount

        return await self._run(work)

    # --- singletons -----------------------------------------------------------------

    async def acquire_singleton(self, name: str, holder: str, *, now: float, ttl: float) -> bool:
        # In the file, not in this object: other processes on the same file contend too.
        # One statement under the write lock: taken, renewed by its holder, or taken over
        # once expired.
        def work(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                row = conn.execute(
                    "INSERT INTO singletons (name, holder, expires_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                    " expires_at = excluded.expires_at"
                    " WHERE singletons.holder = excluded.holder OR singletons.expires_at <= ?"
                    " RETURNING 1",
                    (name, holder, now + ttl, now),
                ).fetchone()
                return row is not None

        return await self._run(work)

    async def release_singleton(self, name: str, holder: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM singletons WHERE name = ? AND holder = ?", (name, holder))

        await self._run(work)

    async def delete_expired_singletons(self, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                cursor = conn.execute("DELETE FROM singletons WHERE expires_at <= ?", (now,))
                return cursor.rowcount

        return await self._run(work)


class _Connection(sqlite3.Connection):
    """The store's connection, with what it keeps between calls of the sessions it read
    and wrote (see :mod:`agenthost.stores.session_states`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session_states = SessionStates()
        self.leases = KeptLeases()


def _insert_run(conn: sqlite3.Connection, record: RunRecord) -> None:
    try:
        conn.execute(
            "INSERT INTO runs (token, status, created_at, expires_at, lease_expires_at,"
            " record) VALUES (?, ?, ?, ?, ?, ?)",
            run_row(record),
        )
    except sqlite3.IntegrityError:
        raise ValueError(f"a run with token {record.token!r} exists") from None


def _states(conn: sqlite3.Connection) -> SessionStates:
    if not isinstance(conn, _Connection):  # pragma: no cover - the store opens only these
        raise TypeError("the SQLite store's connections are its own _Connection")
    return conn.session_states


# --- SQL in one place -------------------------------------------------------------------


def _begin(batch: Sequence[WorkItem[sqlite3.Connection]]) -> str:
    """How a batch's transaction begins: with the write lock, unless all its work only
    reads (a deferred transaction then takes a read snapshot and no lock that would make
    writers, here or in another process, wait)."""
    if all(item.read_only for item in batch):
        return "BEGIN"
    return "BEGIN IMMEDIATE"


def _commit_batch(
    conn: sqlite3.Connection,
    batch: Sequence[WorkItem[sqlite3.Connection]],
    committed: Callable[[], None],
) -> None:
    """Inside the batch's transaction: a savepoint per item, then one commit.

    A batch of one (every batch of an idle host) needs no savepoint: its item's writes are
    the whole transaction, so a failing item rolls the transaction back, and nothing else
    was in it. That saves two statements on each store call of a quiet host.
    """
    if len(batch) == 1:
        _commit_one(conn, batch[0], committed)
        return
    try:
        for item in batch:
            conn.execute("SAVEPOINT item")
            try:
                item.result = item.work(conn)
            except Exception as exc:
                conn.execute("ROLLBACK TO item")
                item.error = exc
            conn.execute("RELEASE item")
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        _fail(batch, exc)
        return
    committed()
    for item in batch:
        item.finished = True


def _commit_one(
    conn: sqlite3.Connection, item: WorkItem[sqlite3.Connection], committed: Callable[[], None]
) -> None:
    """``_commit_batch`` for a batch of one item: the item's transaction is the batch's."""
    try:
        item.result = item.work(conn)
    except Exception as exc:
        item.error = exc
    try:
        if item.error is not None:
            conn.execute("ROLLBACK")
        else:
            conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        _fail([item], exc)
        return
    if item.error is None:
        committed()
    item.finished = True


def _fail(batch: Sequence[WorkItem[sqlite3.Connection]], error: Exception) -> None:
    """Nothing of the batch committed: every caller hears why."""
    for item in batch:
        item.result, item.error, item.finished = None, error, True


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the write lock first, so read-then-write is atomic.

    Inside a group-commit batch the item already runs in the batch's transaction, under its
    own savepoint: nothing more to open.
    """
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


_CONTEXT_COLUMNS = """
i.isolation_key, a.owner, a.qualifier, a.session_id, a.generation, a.created_at,
CASE WHEN :facts THEN (
    SELECT json_group_array(json_array(j.channel, j.native_id))
    FROM identities AS j
    WHERE j.isolation_key = i.isolation_key
      AND NOT (j.channel = i.channel AND j.native_id = i.native_id)
) END,
CASE WHEN :facts THEN (
    SELECT json_group_array(json_array(c.claim_type, c.claim_value))
    FROM identities AS j
    JOIN identity_claims AS c ON c.channel = j.channel AND c.native_id = j.native_id
    WHERE j.isolation_key = i.isolation_key
) END"""
_CONTEXT_JOIN = """
FROM identities AS i
LEFT JOIN session_aliases AS a
  ON a.owner = coalesce(:owner, i.isolation_key) AND a.qualifier = :qualifier"""
_CONTEXT_WHERE = "WHERE i.channel = :channel AND i.native_id = :native_id"

_LOAD_CONTEXT = f"SELECT {_CONTEXT_COLUMNS} {_CONTEXT_JOIN} {_CONTEXT_WHERE}"

# A session's columns as ``rows.session_from_row`` reads them, then its state's layout
# (``stores.session_states``): the tag of the save that wrote it and how many tails it has.
_SESSION_COLUMNS = f"{SESSION_COLUMNS}, state_tag, state_tails"
_SESSION_TAILS = "SELECT path, items FROM session_state_tails WHERE session_id = ? ORDER BY seq"


# The same, with the alias's lease and session (columns 8 and 9...): what a turn opens on,
# in one statement rather than three.
_OPEN_TURN_COLUMNS = ", ".join(f"s.{name.strip()}" for name in _SESSION_COLUMNS.split(","))
_LOAD_OPENING = (
    f"SELECT {_CONTEXT_COLUMNS}, l.state, {_OPEN_TURN_COLUMNS} {_CONTEXT_JOIN}"
    " LEFT JOIN session_leases AS l ON l.session_id = a.session_id"
    f" LEFT JOIN sessions AS s ON s.session_id = a.session_id {_CONTEXT_WHERE}"
)


def _load_context(
    conn: sqlite3.Connection, identity: ChannelIdentity, scope: ScopeKey | None, facts: bool
) -> RequestContext:
    # One query: the alias is owned by the scope's owner or, when that is open, by the key
    # just found. A NULL qualifier (no scope) joins nothing. With facts, two correlated
    # subqueries (both on indexes) add the user's other identities and claims as JSON;
    # without, they are not evaluated.
    row = conn.execute(_LOAD_CONTEXT, _context_parameters(identity, scope, facts)).fetchone()
    if row is None:
        return RequestContext(None, None)
    return _context_from_row(row, facts)


def _decide_opening(
    conn: sqlite3.Connection, plan: opening.Opening
) -> tuple[opening.Outcome, opening.Writes]:
    """Load what ``opening.decide`` needs for ``plan`` and decide (nothing written)."""
    context, lease, session = _load_opening(
        conn, plan.identity, plan.scope, plan.access.needs_facts
    )
    alias = context.alias
    scope = plan.scope
    if context.isolation_key is None and scope is not None and scope.owner:
        # A shared scope names its owner: its alias exists without this key.
        alias = _select_alias(conn, scope.owner, scope.qualifier)
        if alias is not None:
            lease = _select_lease(conn, alias.session_id)
            session = _select_session(conn, alias.session_id)
    loaded = opening.Loaded(context.isolation_key, alias, context.facts, lease, session)
    key = context.isolation_key
    # A retried fork finds the session its first try made; a private key (``opening``
    # rule 5) has none before its turn's save.
    if plan.fork_scope is not None and key is not None and not plan.create_at_finish:
        fork = _select_alias(conn, key, plan.fork_scope.qualifier)
        if fork is not None:
            loaded = attrs.evolve(
                loaded,
                fork_alias=fork,
                fork_lease=_select_lease(conn, fork.session_id),
                fork_session=_select_session(conn, fork.session_id),
            )
    return opening.decide(plan, loaded)


def _load_opening(
    conn: sqlite3.Connection, identity: ChannelIdentity, scope: ScopeKey | None, facts: bool
) -> tuple[RequestContext, leases.LeaseState | None, SessionRecord | None]:
    """:func:`_load_context`, and the lease and session of the alias it found."""
    row = conn.execute(_LOAD_OPENING, _context_parameters(identity, scope, facts)).fetchone()
    if row is None:
        return RequestContext(None, None), None, None
    context = _context_from_row(row, facts)
    alias = context.alias
    if alias is None:
        return context, None, None
    session_id = alias.session_id
    lease_text, session_row = row[8], row[9:]
    if lease_text is None:
        lease = leases.initial_state(session_id)
    elif isinstance(conn, _Connection):
        lease = conn.leases.decode(session_id, lease_text)
    else:
        lease = codec.load_lease(lease_text)
    return context, lease, _session_from_row(conn, session_row) if session_row[0] else None


def _context_parameters(
    identity: ChannelIdentity, scope: ScopeKey | None, facts: bool
) -> dict[str, Any]:
    return {
        "channel": identity.channel,
        "native_id": identity.native_id,
        "owner": scope.owner if scope is not None else None,
        "qualifier": scope.qualifier if scope is not None else None,
        "facts": 1 if facts else 0,
    }


def _context_from_row(row: Any, facts: bool) -> RequestContext:
    alias = alias_from_row(row[1:6]) if row[1] is not None else None
    loaded = facts_from_json(row[6], row[7]) if facts else None
    return RequestContext(row[0], alias, loaded)


# Rows of the key's current members, and rows recorded under the key for identities the
# store holds no key for (a custom resolver); newest first.
_LIST_LAST_SEEN = """
SELECT l.channel, l.conversation_id, l.seen_at, l.identity, l.native_id
FROM identities AS i
JOIN last_seen AS l ON l.channel = i.channel AND l.native_id = i.native_id
WHERE i.isolation_key = :key
UNION ALL
SELECT l.channel, l.conversation_id, l.seen_at, l.identity, l.native_id
FROM last_seen AS l
WHERE l.isolation_key = :key AND NOT EXISTS (
    SELECT 1 FROM identities AS i WHERE i.channel = l.channel AND i.native_id = l.native_id
)
ORDER BY 3 DESC, 1, 5, 2
"""


def _upsert_last_seen(conn: sqlite3.Connection, isolation_key: str, seen: LastSeen) -> None:
    conn.execute(
        "INSERT INTO last_seen (channel, native_id, conversation_id, isolation_key,"
        " seen_at, identity) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (channel, native_id, conversation_id) DO UPDATE SET"
        " isolation_key = excluded.isolation_key, seen_at = excluded.seen_at,"
        " identity = excluded.identity",
        (
            seen.channel,
            seen.identity.native_id,
            seen.conversation_id or "",
            isolation_key,
            seen.seen_at,
            codec.dump(seen.identity),
        ),
    )


def _insert_deliveries(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    conn.executemany(
        "INSERT INTO deliveries (delivery_id, status, next_attempt_at, created_at, updated_at,"
        " record) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
        rows,
    )


_UPDATE_DELIVERY = (
    "UPDATE deliveries SET status = ?, next_attempt_at = ?, updated_at = ?, record = ?"
    " WHERE delivery_id = ?"
)


class _DecodedDeliveries:
    """The deliveries this store wrote last, each with the record text it wrote, so a row
    read back unchanged is not decoded again.

    A delivery's row is written and read back several times in a few moments (scheduled,
    claimed, then its ``Sent``), and decoding a record (JSON, then cattrs) was about a
    quarter of the store's time in a fan-out. A row is taken from here only when its text
    is exactly the text written (another process's write, a rolled-back one or a
    migration reads as any other row). Only what was decoded, or made by the core from
    what was decoded, is remembered, so every value in it is what decoding its text gives
    (a delivery as planned may hold, say, a tuple that reads back as a list). A
    ``Delivery`` is frozen: handing out the same one twice is safe. Bounded: the oldest
    of more than ``LIMIT`` are forgotten.
    """

    LIMIT = 512

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[str, Delivery]] = {}

    def load(self, delivery_id: str, record: str) -> Delivery:
        known = self._by_id.get(delivery_id)
        if known is not None and known[0] == record:
            return known[1]
        d = codec.load_delivery(record)
        self._remember(delivery_id, record, d)
        return d

    def update_row(self, d: Delivery) -> tuple[Any, ...]:
        """``d``'s values for ``_UPDATE_DELIVERY``, remembering the record written."""
        record = codec.dump(d)
        self._remember(d.delivery_id, record, d)
        return (d.status.value, d.next_attempt_at, d.updated_at, record, d.delivery_id)

    def _remember(self, delivery_id: str, record: str, d: Delivery) -> None:
        by_id = self._by_id
        by_id.pop(delivery_id, None)  # re-inserted as the newest
        by_id[delivery_id] = (record, d)
        if len(by_id) > self.LIMIT:
            del by_id[next(iter(by_id))]


def _select_delivery(
    conn: sqlite3.Connection, decoded: _DecodedDeliveries, delivery_id: str
) -> Delivery | None:
    row = conn.execute(
        "SELECT record FROM deliveries WHERE delivery_id = ?", (delivery_id,)
    ).fetchone()
    return decoded.load(delivery_id, row[0]) if row is not None else None


def _select_deliveries(
    conn: sqlite3.Connection, decoded: _DecodedDeliveries, ids: Iterable[str]
) -> dict[str, Delivery]:
    """The deliveries among ``ids`` that exist, by id: one query per few hundred ids (an
    SQLite build may allow as few as 999 parameters a statement)."""
    wanted = sorted(ids)
    found: dict[str, Delivery] = {}
    for start in range(0, len(wanted), _IDS_PER_QUERY):
        chunk = wanted[start : start + _IDS_PER_QUERY]
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT delivery_id, record FROM deliveries WHERE delivery_id IN ({marks})",  # noqa: S608 - only placeholders are interpolated
            chunk,
        ).fetchall()
        for delivery_id, record in rows:
            found[delivery_id] = decoded.load(delivery_id, record)
    return found


_IDS_PER_QUERY = 500


def _members(conn: sqlite3.Connection, isolation_key: str) -> tuple[ChannelIdentity, ...]:
    rows = conn.execute(
        "SELECT channel, native_id FROM identities WHERE isolation_key = ?"
        " ORDER BY channel, native_id",
        (isolation_key,),
    ).fetchall()
    return tuple(ChannelIdentity(channel, native) for channel, native in rows)


def _user(conn: sqlite3.Connection, identity: ChannelIdentity) -> UserRecord:
    row = conn.execute(
        "SELECT isolation_key FROM identities WHERE channel = ? AND native_id = ?",
        (identity.channel, identity.native_id),
    ).fetchone()
    if row is None:
        return UserRecord(None, ())
    return UserRecord(row[0], _members(conn, row[0]))


def _insert_identity_if_absent(
    conn: sqlite3.Connection, identity: ChannelIdentity, key: str, now: float
) -> None:
    conn.execute(
        "INSERT INTO identities (channel, native_id, isolation_key, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (channel, native_id) DO NOTHING",
        (identity.channel, identity.native_id, key, now),
    )


def _set_key(conn: sqlite3.Connection, identity: ChannelIdentity, key: str, now: float) -> None:
    conn.execute(
        "INSERT INTO identities (channel, native_id, isolation_key, created_at)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (channel, native_id) DO UPDATE SET isolation_key = excluded.isolation_key",
        (identity.channel, identity.native_id, key, now),
    )


def _apply_merge(conn: sqlite3.Connection, merge: Merge, now: float) -> None:
    for identity in merge.moved:
        _set_key(conn, identity, merge.to_key, now)
    conn.executemany(
        "INSERT OR REPLACE INTO links (channel, native_id, isolation_key, anchor_channel,"
        " anchor_native_id, source, previous_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.identity.channel,
                r.identity.native_id,
                r.isolation_key,
                r.anchor.channel,
                r.anchor.native_id,
                r.source,
                r.previous_key,
                r.created_at,
            )
            for r in merge.records
        ],
    )


def _forget_claims(
    conn: sqlite3.Connection, identity: ChannelIdentity, *, source: str | None
) -> None:
    if source is None:
        conn.execute(
            "DELETE FROM identity_claims WHERE channel = ? AND native_id = ?",
            (identity.channel, identity.native_id),
        )
    else:
        conn.execute(
            "DELETE FROM identity_claims WHERE channel = ? AND native_id = ? AND source = ?",
            (identity.channel, identity.native_id, source),
        )


def _select_challenge(conn: sqlite3.Connection, locator: str) -> CodeChallenge | None:
    row = conn.execute(
        "SELECT record FROM link_challenges WHERE locator = ?", (locator,)
    ).fetchone()
    return codec.load(row[0], CodeChallenge) if row is not None else None


def _write_challenge(conn: sqlite3.Connection, challenge: CodeChallenge) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO link_challenges (locator, issuer_channel, issuer_native_id,"
        " expires_at, record) VALUES (?, ?, ?, ?, ?)",
        (
            challenge.locator,
            challenge.issuer.channel,
            challenge.issuer.native_id,
            challenge.expires_at,
            codec.dump(challenge),
        ),
    )


def _select_counter(conn: sqlite3.Connection, scope: str) -> AttemptCounter:
    row = conn.execute("SELECT record FROM link_attempts WHERE scope = ?", (scope,)).fetchone()
    return codec.load(row[0], AttemptCounter) if row is not None else AttemptCounter(scope)


def _write_counter(conn: sqlite3.Connection, counter: AttemptCounter) -> None:
    if counter == AttemptCounter(counter.scope):
        conn.execute("DELETE FROM link_attempts WHERE scope = ?", (counter.scope,))
        return
    conn.execute(
        "INSERT OR REPLACE INTO link_attempts (scope, expires_at, record) VALUES (?, ?, ?)",
        (counter.scope, counter.expires_at or 0.0, codec.dump(counter)),
    )


def _write_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(version),),
    )


def _alias_key(scope: ScopeKey) -> tuple[str, str]:
    if scope.owner is None:
        raise ValueError("an alias scope needs its owner")
    return (scope.owner, scope.qualifier)


def _select_alias(conn: sqlite3.Connection, owner: str, qualifier: str) -> SessionAlias | None:
    row = conn.execute(
        "SELECT owner, qualifier, session_id, generation, created_at FROM session_aliases"
        " WHERE owner = ? AND qualifier = ?",
        (owner, qualifier),
    ).fetchone()
    return alias_from_row(row) if row is not None else None


def _write_alias(conn: sqlite3.Connection, alias: SessionAlias) -> None:
    conn.execute(
        "INSERT INTO session_aliases (owner, qualifier, session_id, generation, created_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, qualifier) DO UPDATE SET"
        " session_id = excluded.session_id, generation = excluded.generation,"
        " created_at = excluded.created_at",
        (alias.owner, alias.qualifier, alias.session_id, alias.generation, alias.created_at),
    )


def _insert_alias_if_absent(conn: sqlite3.Connection, alias: SessionAlias) -> bool:
    """Insert ``alias`` unless its scope has one; answer whether it was inserted."""
    inserted = conn.execute(
        "INSERT INTO session_aliases (owner, qualifier, session_id, generation, created_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, qualifier) DO NOTHING",
        (alias.owner, alias.qualifier, alias.session_id, alias.generation, alias.created_at),
    )
    return inserted.rowcount == 1


def _select_session(conn: sqlite3.Connection, session_id: str) -> SessionRecord | None:
    row = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?",  # noqa: S608 - a constant column list
        (session_id,),
    ).fetchone()
    return _session_from_row(conn, row) if row is not None else None


def _session_from_row(conn: sqlite3.Connection, row: Any, keep: bool = True) -> SessionRecord:
    """A session's row (``_SESSION_COLUMNS``) as a record; its state read with its tails
    unless the connection kept it (``keep``: and kept from now on)."""
    session_id, head, tag, tail_count = row[0], row[7], row[9], row[10]
    if head is None:
        return session_from_row(row[:9])

    def tails() -> list[tuple[str, str]]:
        return conn.execute(_SESSION_TAILS, (session_id,)).fetchall() if tail_count else []

    if keep:
        state = _states(conn).read(session_id, head, tag, tails)
    else:
        state = session_states.assemble(head, tails())
    return session_from_row(row[:9], state=state)


def _write_session(
    conn: sqlite3.Connection, session_id: str, record: SessionRecord, *, fresh: bool = False
) -> None:
    """Save ``record``: its state on the stored tails when its long lists only grew
    (``stores.session_states``), else whole. ``fresh``: the session is being created (a
    new alias's), so it has no tails to delete."""
    states = _states(conn)
    if record.state is None:
        states.forget(session_id)
        _upsert_session(conn, session_id, record, None, None, 0)
        if not fresh:
            conn.execute(_DELETE_TAILS, (session_id,))
        return
    # Already JSON-shaped (the target adapter's own serialization): dumped as it is,
    # without a converter walk.
    write = states.plan(session_id, record.state)
    if write.replaces is None or not _update_session(conn, session_id, record, write):
        if write.replaces is not None:  # another process saved it since: write it whole
            write = states.plan_whole(record.state)
        _upsert_session(conn, session_id, record, write.head, write.tag, len(write.rows))
    if write.rewrite and not fresh:
        conn.execute(_DELETE_TAILS, (session_id,))
    for seq, path, items in write.tails:
        conn.execute(_INSERT_TAIL, (session_id, seq, path, items))
    states.saved(session_id, write)


_DELETE_TAILS = "DELETE FROM session_state_tails WHERE session_id = ?"
_INSERT_TAIL = "INSERT INTO session_state_tails (session_id, seq, path, items) VALUES (?, ?, ?, ?)"


def _update_session(
    conn: sqlite3.Connection, session_id: str, record: SessionRecord, write: StateWrite
) -> bool:
    """Save ``record`` with ``write``'s head, if the row still holds the state ``write``
    builds on; answer whether it did."""
    updated = conn.execute(
        "UPDATE sessions SET owner = ?, qualifier = ?, generation = ?, created_at = ?,"
        " updated_at = ?, turns = ?, state = ?, state_tag = ?, state_tails = ?,"
        " state_expires_when_idle = ? WHERE session_id = ? AND state_tag = ?",
        (
            *session_columns(record),
            write.head,
            write.tag,
            len(write.rows),
            int(record.state_expires_when_idle),
            session_id,
            write.replaces,
        ),
    )
    return updated.rowcount == 1


def _upsert_session(
    conn: sqlite3.Connection,
    session_id: str,
    record: SessionRecord,
    head: str | None,
    tag: str | None,
    tail_count: int,
) -> None:
    # An upsert, not INSERT OR REPLACE: a replace deletes the row and inserts it again under
    # a new rowid, rewriting every index entry of it, where an update in place leaves the
    # primary-key index alone. Each page a commit dirties is a WAL frame written, and the
    # session is saved on every turn.
    conn.execute(
        "INSERT INTO sessions (session_id, owner, qualifier, generation, created_at,"
        " updated_at, turns, state, state_expires_when_idle, state_tag, state_tails)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner,"
        " qualifier = excluded.qualifier, generation = excluded.generation,"
        " created_at = excluded.created_at, updated_at = excluded.updated_at,"
        " turns = excluded.turns, state = excluded.state,"
        " state_expires_when_idle = excluded.state_expires_when_idle,"
        " state_tag = excluded.state_tag, state_tails = excluded.state_tails",
        (
            session_id,
            *session_columns(record),
            head,
            int(record.state_expires_when_idle),
            tag,
            tail_count,
        ),
    )


def _finish_run(
    conn: sqlite3.Connection,
    session_id: str,
    run_id: str,
    session: SessionRecord | None,
    now: float,
    creation: opening.Creation | None = None,
) -> bool:
    """Inside a transaction: release the lease; save ``session`` while ``run_id`` held it."""
    if creation is not None:
        return _finish_creation(conn, creation, run_id, session, now)
    if not _release_kept_lease(conn, session_id, run_id, now):
        state = _select_lease(conn, session_id)
        new_state, decision = leases.release(state, run_id, now)
        if not isinstance(decision, leases.Released):
            return False
        _write_lease(conn, session_id, new_state)
    if session is None:
        return False
    _write_session(conn, session_id, session)
    return True


def _finish_creation(
    conn: sqlite3.Connection,
    creation: opening.Creation,
    run_id: str,
    session: SessionRecord | None,
    now: float,
) -> bool:
    """Inside a transaction: create the session the opening left to the save (``opening``
    rule 5), with the turn's ``session`` when it has one, and its lease released."""
    alias = creation.alias
    new_state, decision = leases.release(creation.lease, run_id, now)
    if not isinstance(decision, leases.Released):  # pragma: no cover - the turn holds it
        return False
    if not _insert_alias_if_absent(conn, alias):
        return False  # the key was not private after all: the existing session stays
    _write_session(
        conn, alias.session_id, session if session is not None else creation.record, fresh=True
    )
    _write_lease(conn, alias.session_id, new_state)
    return session is not None


def _release_kept_lease(conn: sqlite3.Connection, session_id: str, run_id: str, now: float) -> bool:
    """Release the lease in one statement when it is stored as this connection last wrote
    it (the turn's own grant, in the usual case): whether it did.

    The release is decided on the kept state and written only where the stored text is
    still the kept text, so a lease that changed since (a waiter arrived, another process
    took over) is left alone and ``False`` sends the caller to the full read.
    """
    kept = conn.leases.last(session_id) if isinstance(conn, _Connection) else None
    if kept is None or not isinstance(conn, _Connection):
        return False
    kept_text, kept_state = kept
    new_state, decision = leases.release(kept_state, run_id, now)
    if not isinstance(decision, leases.Released):
        return False
    cursor = conn.execute(
        "UPDATE session_leases SET state = ? WHERE session_id = ? AND state = ?",
        (conn.leases.encode(session_id, new_state), session_id, kept_text),
    )
    return cursor.rowcount == 1


def _select_lease(conn: sqlite3.Connection, session_id: str) -> leases.LeaseState:
    row = conn.execute(
        "SELECT state FROM session_leases WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return leases.initial_state(session_id)
    if isinstance(conn, _Connection):
        return conn.leases.decode(session_id, row[0])
    return codec.load_lease(row[0])


def _write_lease(conn: sqlite3.Connection, session_id: str, state: leases.LeaseState) -> None:
    # An upsert, as for sessions: the lease is written twice a turn.
    conn.execute(
        "INSERT INTO session_leases (session_id, state) VALUES (?, ?)"
        " ON CONFLICT (session_id) DO UPDATE SET state = excluded.state",
        (
            session_id,
            conn.leases.encode(session_id, state)
            if isinstance(conn, _Connection)
            else codec.dump_lease(state),
        ),
    )


def _apply_run_event(conn: sqlite3.Connection, token: str, event: RunEvent) -> RunRecord:
    """Inside a transaction: load the run, apply the core's transition, write it back."""
    record = _select_run(conn, token)
    if record is None:
        raise RunNotFound(token)
    new = background.apply(record, event)
    conn.execute(
        "UPDATE runs SET status = ?, created_at = ?, expires_at = ?,"
        " lease_expires_at = ?, record = ? WHERE token = ?",
        (*run_row(new)[1:], token),
    )
    return new


def _select_run(conn: sqlite3.Connection, token: str) -> RunRecord | None:
    row = conn.execute("SELECT record FROM runs WHERE token = ?", (token,)).fetchone()
    return codec.load_run(row[0]) if row is not None else None


def _put_channel_records(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO channel_records (channel, kind, key, owner,"
        " created_at, expires_at, value) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
