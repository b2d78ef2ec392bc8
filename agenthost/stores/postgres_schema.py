"""The PostgreSQL store's schema: its tables, its version and the migrations between versions.

The schema carries the same records as the SQLite store's (``stores.base.SCHEMA_VERSION``
names the version of both). Records are ``jsonb`` written by ``stores.codec``; pickle is
never used. A database is created at version 1 and migrated like any other, one version at
a time, each step in the transaction that records the new version, under an advisory lock
so that replicas starting together migrate it once.

``agenthost migrate`` calls :func:`migrate`; a serving store calls it too unless told not
to, and either way refuses a database written by a newer schema than it knows.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from agenthost.stores.base import SCHEMA_VERSION, StoreSchemaError

Migration = Callable[[psycopg.Connection], None]


def _add_idle_state_expiry(conn: psycopg.Connection) -> None:
    """2 -> 3: which sessions' states expire when idle (``Store.expire_idle_states``).

    Sessions saved before the upgrade are not marked: their next saved turn marks them.
    With a constant default the column is added without rewriting the table.
    """
    conn.execute(
        "ALTER TABLE sessions ADD COLUMN state_expires_when_idle BOOLEAN NOT NULL DEFAULT false"
    )
    # Only the marked sessions are indexed, by the time they were saved: the sweep's range.
    conn.execute(
        "CREATE INDEX sessions_expiring_when_idle ON sessions (updated_at)"
        " WHERE state_expires_when_idle"
    )


# Version N -> the function that upgrades a version-N database to N+1. Never edit a released
# one: add the next.
MIGRATIONS: dict[int, Migration] = {}

# Version 2 gave the SQLite store the ``singletons`` table PostgreSQL had from version 1:
# nothing to change here but the number.
MIGRATIONS[1] = lambda conn: None
MIGRATIONS[2] = _add_idle_state_expiry
MIGRATIONS[3] = lambda conn: None  # SQLite's state layout; this schema stores states whole

# The advisory lock every migration holds (a constant: one migrator per database schema).
_MIGRATION_LOCK = "agenthost:migrate"

# Every text column is ``COLLATE "C"``: keys sort by code point, as the contract (and SQLite)
# order them, whatever the database's locale; prefix ranges rely on it.
SCHEMA_V1 = (
    """
    CREATE TABLE meta (
        key TEXT COLLATE "C" PRIMARY KEY,
        value TEXT COLLATE "C" NOT NULL
    )
    """,
    """
    CREATE TABLE identities (
        channel TEXT COLLATE "C" NOT NULL,
        native_id TEXT COLLATE "C" NOT NULL,
        isolation_key TEXT COLLATE "C" NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (channel, native_id)
    )
    """,
    "CREATE INDEX identities_by_key ON identities (isolation_key)",
    """
    CREATE TABLE identity_claims (
        channel TEXT COLLATE "C" NOT NULL,
        native_id TEXT COLLATE "C" NOT NULL,
        claim_type TEXT COLLATE "C" NOT NULL,
        claim_value TEXT COLLATE "C" NOT NULL,
        source TEXT COLLATE "C" NOT NULL,
        verified_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (channel, native_id, claim_type, claim_value)
    )
    """,
    "CREATE INDEX identity_claims_by_claim ON identity_claims (claim_type, claim_value)",
    """
    CREATE TABLE links (
        channel TEXT COLLATE "C" NOT NULL,
        native_id TEXT COLLATE "C" NOT NULL,
        isolation_key TEXT COLLATE "C" NOT NULL,
        anchor_channel TEXT COLLATE "C" NOT NULL,
        anchor_native_id TEXT COLLATE "C" NOT NULL,
        source TEXT COLLATE "C" NOT NULL,
        previous_key TEXT COLLATE "C",
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (channel, native_id)
    )
    """,
    "CREATE INDEX links_by_key ON links (isolation_key, created_at)",
    """
    CREATE TABLE link_challenges (
        locator TEXT COLLATE "C" PRIMARY KEY,
        issuer_channel TEXT COLLATE "C" NOT NULL,
        issuer_native_id TEXT COLLATE "C" NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        record JSONB NOT NULL
    )
    """,
    """
    CREATE UNIQUE INDEX link_challenges_by_issuer
        ON link_challenges (issuer_channel, issuer_native_id)
    """,
    "CREATE INDEX link_challenges_by_expiry ON link_challenges (expires_at)",
    """
    CREATE TABLE link_attempts (
        scope TEXT COLLATE "C" PRIMARY KEY,
        expires_at DOUBLE PRECISION NOT NULL,
        record JSONB NOT NULL
    )
    """,
    "CREATE INDEX link_attempts_by_expiry ON link_attempts (expires_at)",
    """
    CREATE TABLE session_aliases (
        owner TEXT COLLATE "C" NOT NULL,
        qualifier TEXT COLLATE "C" NOT NULL,
        session_id TEXT COLLATE "C" NOT NULL,
        generation INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (owner, qualifier)
    )
    """,
    """
    CREATE TABLE sessions (
        session_id TEXT COLLATE "C" PRIMARY KEY,
        owner TEXT COLLATE "C" NOT NULL,
        qualifier TEXT COLLATE "C" NOT NULL,
        generation INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        turns INTEGER NOT NULL,
        state JSONB
    )
    """,
    "CREATE INDEX sessions_by_owner ON sessions (owner, created_at, generation, session_id)",
    """
    CREATE TABLE session_leases (
        session_id TEXT COLLATE "C" PRIMARY KEY,
        state JSONB NOT NULL
    )
    """,
    """
    CREATE TABLE runs (
        token TEXT COLLATE "C" PRIMARY KEY,
        status TEXT COLLATE "C" NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        lease_expires_at DOUBLE PRECISION,
        record JSONB NOT NULL
    )
    """,
    "CREATE INDEX runs_by_status ON runs (status, created_at, token)",
    "CREATE INDEX runs_by_expiry ON runs (expires_at)",
    """
    CREATE TABLE channel_records (
        channel TEXT COLLATE "C" NOT NULL,
        kind TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        owner TEXT COLLATE "C",
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        value JSONB NOT NULL,
        PRIMARY KEY (channel, kind, key)
    )
    """,
    "CREATE INDEX channel_records_by_expiry ON channel_records (expires_at)",
    """
    CREATE TABLE last_seen (
        channel TEXT COLLATE "C" NOT NULL,
        native_id TEXT COLLATE "C" NOT NULL,
        conversation_id TEXT COLLATE "C" NOT NULL,
        isolation_key TEXT COLLATE "C" NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        identity JSONB NOT NULL,
        PRIMARY KEY (channel, native_id, conversation_id)
    )
    """,
    "CREATE INDEX last_seen_by_key ON last_seen (isolation_key)",
    """
    CREATE TABLE deliveries (
        delivery_id TEXT COLLATE "C" PRIMARY KEY,
        status TEXT COLLATE "C" NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        record JSONB NOT NULL
    )
    """,
    "CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)",
    "CREATE INDEX deliveries_by_update ON deliveries (status, updated_at)",
    "CREATE INDEX deliveries_by_age ON deliveries (created_at, delivery_id)",
    # Named leases (``acquire_singleton``): one holder per name until it expires.
    """
    CREATE TABLE singletons (
        name TEXT COLLATE "C" PRIMARY KEY,
        holder TEXT COLLATE "C" NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )
    """,
)


def stored_version(conn: psycopg.Connection) -> int | None:
    """The schema version of the database ``conn`` points at (``None``: no agenthost schema).

    Raises :class:`StoreSchemaError` when the schema holds other tables but no agenthost
    ``meta`` table, or an unreadable version.
    """
    row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        others = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchone()
        if others is not None and others[0]:
            raise StoreSchemaError(
                f"schema {_schema_name(conn)!r} holds tables but no agenthost meta table; "
                "point the store at an empty schema or database"
            )
        return None
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(found[0]) if found is not None else -1
    except ValueError:
        return -1


def check_version(conn: psycopg.Connection, *, migrated: bool) -> int:
    """Raise unless the database can be served by this agenthost; return its version.

    A newer schema is always refused; an older one (or none) is refused unless ``migrated``
    says the caller applies the migrations.
    """
    found = stored_version(conn)
    name = _schema_name(conn)
    if found is not None and found < 1:
        raise StoreSchemaError(
            f"schema {name!r} has no readable schema_version in its meta table; it was not "
            "written by agenthost or was damaged"
        )
    if found is not None and found > SCHEMA_VERSION:
        raise StoreSchemaError(
            f"schema {name!r} holds agenthost store schema version {found}, but this agenthost "
            f"supports version {SCHEMA_VERSION} at most; upgrade agenthost on every replica "
            "(a newer release migrated this database)"
        )
    if not migrated and (found is None or found < SCHEMA_VERSION):
        raise StoreSchemaError(
            f"schema {name!r} is at store schema version {found or 0}, this agenthost needs "
            f"{SCHEMA_VERSION}: run `agenthost migrate --store URL` first"
        )
    return found or 0


def migrate(conn: psycopg.Connection) -> tuple[int, int]:
    """Bring the schema to ``SCHEMA_VERSION``, in one transaction; return (from, to).

    ``conn`` must be in autocommit mode (the transaction is opened here).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_MIGRATION_LOCK,))
        found = check_version(conn, migrated=True)
        if found == 0:
            for statement in SCHEMA_V1:
                conn.execute(statement)
            _write_version(conn, 1)
            current = 1
        else:
            current = found
        missing = [v for v in range(current, SCHEMA_VERSION) if v not in MIGRATIONS]
        if missing:
            raise StoreSchemaError(
                f"this agenthost (schema version {SCHEMA_VERSION}) has no migration from "
                f"version {missing[0]}; the installed agenthost is incomplete: reinstall it"
            )
        for version in range(current, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
            _write_version(conn, version + 1)
    return found, SCHEMA_VERSION


def _write_version(conn: psycopg.Connection, version: int) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(version),),
    )


def _schema_name(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row is not None and row[0] is not None else "(none)"
