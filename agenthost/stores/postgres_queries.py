"""The PostgreSQL store's SQL: one function per read or write, each on a connection inside the
caller's transaction.

Concurrency across replicas comes from locks taken before a read that a write depends on:
an existing row is read ``FOR UPDATE``; a record that may not exist yet (an identity, an
alias, a session lease) is guarded by a transaction-scoped advisory lock on its name
(:func:`lock`), taken in one order everywhere (linking, then identities, then an alias, then
a lease) so that waits form no cycle in the common paths. The rare cycle between two
batches of different replicas is broken by PostgreSQL's deadlock detector; the writer
retries the item that lost (see ``postgres_writer``).

Records are ``jsonb``; they are read back as their JSON text (the connection's loader) and
decoded by ``stores.codec``, the same shapes the SQLite store writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from agenthost.sansio_core import background, leases, sessions
from agenthost.sansio_core.background import RunEvent, RunRecord
from agenthost.sansio_core.delivery import Delivery
from agenthost.sansio_core.effects import RequestContext
from agenthost.sansio_core.link_codes import AttemptCounter, CodeChallenge
from agenthost.sansio_core.linking import LinkRecord, Merge, UserRecord
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores import codec
from agenthost.stores.base import RunNotFound
from agenthost.stores.rows import (
    SESSION_COLUMNS,
    alias_from_row,
    facts_from_json,
    link_from_row,
    run_row,
    session_columns,
    session_from_row,
)

Conn = psycopg.Connection[Any]

# The names advisory locks are taken on; the lock key is a 64-bit hash of the name, so two
# names colliding only serialize more than needed.
LINKING_LOCK = "linking"


def lock(conn: Conn, *name: str) -> None:
    """Hold the advisory lock named ``name`` until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("\x1f".join(name),))


def lock_identity(conn: Conn, identity: ChannelIdentity) -> None:
    lock(conn, "identity", identity.channel, identity.native_id)


def lock_identities(conn: Conn, identities: Sequence[ChannelIdentity]) -> None:
    # Sorted: two transactions locking overlapping sets wait in one order.
    for identity in sorted(set(identities), key=lambda i: (i.channel, i.native_id)):
        lock_identity(conn, identity)


def lock_alias(conn: Conn, owner: str, qualifier: str) -> None:
    lock(conn, "alias", owner, qualifier)


def lock_lease(conn: Conn, session_id: str) -> None:
    lock(conn, "lease", session_id)


# --- identities and context ---------------------------------------------------------------

_LOAD_CONTEXT = """
SELECT i.isolation_key, a.owner, a.qualifier, a.session_id, a.generation, a.created_at,
       CASE WHEN %(facts)s THEN (
           SELECT coalesce(jsonb_agg(jsonb_build_array(j.channel, j.native_id)), '[]')
           FROM identities AS j
           WHERE j.isolation_key = i.isolation_key
             AND NOT (j.channel = i.channel AND j.native_id = i.native_id)
       ) END,
       CASE WHEN %(facts)s THEN (
           SELECT coalesce(jsonb_agg(jsonb_build_array(c.claim_type, c.claim_value)), '[]')
           FROM identities AS j
           JOIN identity_claims AS c ON c.channel = j.channel AND c.native_id = j.native_id
           WHERE j.isolation_key = i.isolation_key
       ) END,
       CASE WHEN %(lock_lease)s AND a.session_id IS NOT NULL THEN
           pg_advisory_xact_lock(hashtextextended('lease' || chr(31) || a.session_id, 0))
       END
FROM identities AS i
LEFT JOIN session_aliases AS a
  ON a.owner = coalesce(%(owner)s, i.isolation_key) AND a.qualifier = %(qualifier)s
WHERE i.channel = %(channel)s AND i.native_id = %(native_id)s
"""


def load_context(
    conn: Conn,
    identity: ChannelIdentity,
    scope: ScopeKey | None,
    facts: bool,
    *,
    lock_lease: bool = False,
) -> RequestContext:
    """The key, the scope's alias and (with ``facts``) the user's facts, in one query.

    With ``lock_lease`` the same query takes the lock of the alias's session lease (as
    :func:`lock_lease` names it): the lease read in a later statement is then current.
    """
    row = conn.execute(
        _LOAD_CONTEXT,
        {
            "channel": identity.channel,
            "native_id": identity.native_id,
            "owner": scope.owner if scope is not None else None,
            "qualifier": scope.qualifier if scope is not None else None,
            "facts": facts,
            "lock_lease": lock_lease,
        },
    ).fetchone()
    if row is None:
        return RequestContext(None, None)
    alias = alias_from_row(row[1:6]) if row[1] is not None else None
    loaded = facts_from_json(row[6], row[7]) if facts else None
    return RequestContext(row[0], alias, loaded)


_LOCK_SCOPE_ALIAS = """
SELECT pg_advisory_xact_lock(
    hashtextextended('alias' || chr(31) || o.owner || chr(31) || %(qualifier)s, 0)
)
FROM (
    SELECT coalesce(%(owner)s::text, (
        SELECT isolation_key FROM identities
        WHERE channel = %(channel)s AND native_id = %(native_id)s
    )) AS owner
) AS o
WHERE o.owner IS NOT NULL
"""


def lock_scope_alias(conn: Conn, identity: ChannelIdentity, scope: ScopeKey) -> None:
    """Lock the alias ``load_context`` reads for ``scope`` (as :func:`lock_alias` names it):
    the scope's owner or, when that is open, the identity's key. The key is read in the
    same statement, which is sound only while the caller holds the identity's lock (a
    link, which moves keys, takes it too)."""
    conn.execute(
        _LOCK_SCOPE_ALIAS,
        {
            "channel": identity.channel,
            "native_id": identity.native_id,
            "owner": scope.owner,
            "qualifier": scope.qualifier,
        },
    )


def select_key(conn: Conn, identity: ChannelIdentity) -> str | None:
    row = conn.execute(
        "SELECT isolation_key FROM identities WHERE channel = %s AND native_id = %s",
        (identity.channel, identity.native_id),
    ).fetchone()
    return str(row[0]) if row is not None else None


def members(conn: Conn, isolation_key: str) -> tuple[ChannelIdentity, ...]:
    rows = conn.execute(
        "SELECT channel, native_id FROM identities WHERE isolation_key = %s"
        " ORDER BY channel, native_id",
        (isolation_key,),
    ).fetchall()
    return tuple(ChannelIdentity(channel, native) for channel, native in rows)


def user(conn: Conn, identity: ChannelIdentity) -> UserRecord:
    key = select_key(conn, identity)
    if key is None:
        return UserRecord(None, ())
    return UserRecord(key, members(conn, key))


def insert_identity_if_absent(conn: Conn, identity: ChannelIdentity, key: str, now: float) -> None:
    conn.execute(
        "INSERT INTO identities (channel, native_id, isolation_key, created_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (channel, native_id) DO NOTHING",
        (identity.channel, identity.native_id, key, now),
    )


def set_key(conn: Conn, identity: ChannelIdentity, key: str, now: float) -> None:
    conn.execute(
        "INSERT INTO identities (channel, native_id, isolation_key, created_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (channel, native_id)"
        " DO UPDATE SET isolation_key = excluded.isolation_key",
        (identity.channel, identity.native_id, key, now),
    )


def apply_merge(conn: Conn, merge: Merge, now: float) -> None:
    for identity in merge.moved:
        set_key(conn, identity, merge.to_key, now)
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO links (channel, native_id, isolation_key, anchor_channel,"
            " anchor_native_id, source, previous_key, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (channel, native_id)"
            " DO UPDATE SET isolation_key = excluded.isolation_key,"
            " anchor_channel = excluded.anchor_channel,"
            " anchor_native_id = excluded.anchor_native_id, source = excluded.source,"
            " previous_key = excluded.previous_key, created_at = excluded.created_at",
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


def list_links(conn: Conn, isolation_key: str) -> list[LinkRecord]:
    rows = conn.execute(
        "SELECT channel, native_id, isolation_key, anchor_channel, anchor_native_id,"
        " source, previous_key, created_at FROM links WHERE isolation_key = %s"
        " ORDER BY created_at, channel, native_id",
        (isolation_key,),
    ).fetchall()
    return [link_from_row(row) for row in rows]


def has_claims(conn: Conn, identity: ChannelIdentity) -> bool:
    row = conn.execute(
        "SELECT 1 FROM identity_claims WHERE channel = %s AND native_id = %s LIMIT 1",
        (identity.channel, identity.native_id),
    ).fetchone()
    return row is not None


def claim_holders(conn: Conn, claim_type: str, claim_value: str) -> list[ChannelIdentity]:
    rows = conn.execute(
        "SELECT channel, native_id FROM identity_claims WHERE claim_type = %s"
        " AND claim_value = %s ORDER BY channel, native_id",
        (claim_type, claim_value),
    ).fetchall()
    return [ChannelIdentity(channel, native) for channel, native in rows]


def forget_claims(conn: Conn, identity: ChannelIdentity, *, source: str | None) -> None:
    if source is None:
        conn.execute(
            "DELETE FROM identity_claims WHERE channel = %s AND native_id = %s",
            (identity.channel, identity.native_id),
        )
    else:
        conn.execute(
            "DELETE FROM identity_claims WHERE channel = %s AND native_id = %s AND source = %s",
            (identity.channel, identity.native_id, source),
        )


def record_claims(
    conn: Conn,
    identity: ChannelIdentity,
    rows: Sequence[tuple[str, str]],
    source: str,
    now: float,
) -> None:
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO identity_claims (channel, native_id, claim_type, claim_value, source,"
            " verified_at) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (channel, native_id, claim_type, claim_value)"
            " DO UPDATE SET source = excluded.source, verified_at = excluded.verified_at",
            [
                (identity.channel, identity.native_id, kind, value, source, now)
                for kind, value in rows
            ],
        )


def delete_link(conn: Conn, identity: ChannelIdentity) -> None:
    conn.execute(
        "DELETE FROM links WHERE channel = %s AND native_id = %s",
        (identity.channel, identity.native_id),
    )


# --- one-time codes -----------------------------------------------------------------------


def select_challenge(conn: Conn, locator: str, *, for_update: bool = False) -> CodeChallenge | None:
    sql = "SELECT record FROM link_challenges WHERE locator = %s"
    row = conn.execute(sql + (" FOR UPDATE" if for_update else ""), (locator,)).fetchone()
    return codec.load(row[0], CodeChallenge) if row is not None else None


def challenge_issuer(conn: Conn, locator: str) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT issuer_channel, issuer_native_id FROM link_challenges WHERE locator = %s",
        (locator,),
    ).fetchone()
    return (str(row[0]), str(row[1])) if row is not None else None


def delete_challenges_of(conn: Conn, issuer: ChannelIdentity) -> None:
    conn.execute(
        "DELETE FROM link_challenges WHERE issuer_channel = %s AND issuer_native_id = %s",
        (issuer.channel, issuer.native_id),
    )


def write_challenge(conn: Conn, challenge: CodeChallenge) -> None:
    conn.execute(
        "INSERT INTO link_challenges (locator, issuer_channel, issuer_native_id, expires_at,"
        " record) VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT (locator) DO UPDATE SET"
        " issuer_channel = excluded.issuer_channel,"
        " issuer_native_id = excluded.issuer_native_id,"
        " expires_at = excluded.expires_at, record = excluded.record",
        (
            challenge.locator,
            challenge.issuer.channel,
            challenge.issuer.native_id,
            challenge.expires_at,
            codec.dump(challenge),
        ),
    )


def select_counter(conn: Conn, scope: str) -> AttemptCounter:
    row = conn.execute("SELECT record FROM link_attempts WHERE scope = %s", (scope,)).fetchone()
    return codec.load(row[0], AttemptCounter) if row is not None else AttemptCounter(scope)


def write_counter(conn: Conn, counter: AttemptCounter) -> None:
    if counter == AttemptCounter(counter.scope):
        conn.execute("DELETE FROM link_attempts WHERE scope = %s", (counter.scope,))
        return
    conn.execute(
        "INSERT INTO link_attempts (scope, expires_at, record) VALUES (%s, %s, %s::jsonb)"
        " ON CONFLICT (scope) DO UPDATE SET expires_at = excluded.expires_at,"
        " record = excluded.record",
        (counter.scope, counter.expires_at or 0.0, codec.dump(counter)),
    )


# --- sessions and leases ------------------------------------------------------------------


def select_alias(conn: Conn, owner: str, qualifier: str) -> SessionAlias | None:
    row = conn.execute(
        "SELECT owner, qualifier, session_id, generation, created_at FROM session_aliases"
        " WHERE owner = %s AND qualifier = %s",
        (owner, qualifier),
    ).fetchone()
    return alias_from_row(row) if row is not None else None


def write_alias(conn: Conn, alias: SessionAlias) -> None:
    conn.execute(
        "INSERT INTO session_aliases (owner, qualifier, session_id, generation, created_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner, qualifier) DO UPDATE SET"
        " session_id = excluded.session_id, generation = excluded.generation,"
        " created_at = excluded.created_at",
        (alias.owner, alias.qualifier, alias.session_id, alias.generation, alias.created_at),
    )


def insert_alias_if_absent(conn: Conn, alias: SessionAlias) -> bool:
    """Insert ``alias`` unless its scope has one; answer whether it was inserted."""
    row = conn.execute(
        "INSERT INTO session_aliases (owner, qualifier, session_id, generation, created_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner, qualifier) DO NOTHING RETURNING 1",
        (alias.owner, alias.qualifier, alias.session_id, alias.generation, alias.created_at),
    ).fetchone()
    return row is not None


def select_session(conn: Conn, session_id: str) -> SessionRecord | None:
    row = conn.execute(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = %s",  # noqa: S608 - a constant column list
        (session_id,),
    ).fetchone()
    return session_from_row(row) if row is not None else None


def list_sessions(conn: Conn, owner: str) -> list[SessionRecord]:
    rows = conn.execute(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE owner = %s"  # noqa: S608 - a constant column list
        " ORDER BY created_at, generation, session_id",
        (owner,),
    ).fetchall()
    return [session_from_row(row) for row in rows]


def write_session(conn: Conn, session_id: str, record: SessionRecord) -> None:
    conn.execute(
        "INSERT INTO sessions (session_id, owner, qualifier, generation, created_at,"
        " updated_at, turns, state, state_expires_when_idle)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)"
        " ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner,"
        " qualifier = excluded.qualifier, generation = excluded.generation,"
        " created_at = excluded.created_at, updated_at = excluded.updated_at,"
        " turns = excluded.turns, state = excluded.state,"
        " state_expires_when_idle = excluded.state_expires_when_idle",
        (
            session_id,
            *session_columns(record),
            codec.to_state_json(record.state) if record.state is not None else None,
            record.state_expires_when_idle,
        ),
    )


# The sweep's candidates, least recently saved first, each kept only when its lease's lock
# (``lock_lease``'s) is free right now: tried, never waited for. A session whose turn is
# opening or finishing on another connection is left to a later pass, and replicas sweeping
# at once split the candidates instead of queueing behind each other. MATERIALIZED keeps the
# LIMIT ahead of the locks: only the candidates are tried.
_LOCK_EXPIRING_SESSIONS = """
WITH candidates AS MATERIALIZED (
    SELECT session_id, updated_at FROM sessions
    WHERE state_expires_when_idle AND updated_at <= %(saved_before)s
    ORDER BY updated_at LIMIT %(limit)s
)
SELECT session_id FROM candidates
WHERE pg_try_advisory_xact_lock(hashtextextended('lease' || chr(31) || session_id, 0))
"""

# Read after the locks are held (a statement of its own, so it sees what their previous
# holders committed).
_SELECT_EXPIRING_SESSIONS = """
SELECT s.session_id, s.state_expires_when_idle, s.updated_at, l.state
FROM sessions AS s LEFT JOIN session_leases AS l ON l.session_id = s.session_id
WHERE s.session_id = ANY(%s)
"""


def expire_idle_states(conn: Conn, now: float, ttl: float, limit: int) -> int:
    """``Store.expire_idle_states``: lock the candidates' leases, read, decide, drop."""
    locked = [
        row[0]
        for row in conn.execute(
            _LOCK_EXPIRING_SESSIONS, {"saved_before": now - ttl, "limit": limit}
        ).fetchall()
    ]
    if not locked:
        return 0
    doomed = [
        session_id
        for session_id, expiring, saved_at, lease in conn.execute(
            _SELECT_EXPIRING_SESSIONS, (locked,)
        ).fetchall()
        if sessions.idle_state_expired(
            expires_when_idle=expiring,
            saved_at=saved_at,
            lease=codec.load_lease(lease) if lease is not None else None,
            now=now,
            ttl=ttl,
        )
    ]
    if doomed:
        conn.execute(
            "UPDATE sessions SET state = NULL, state_expires_when_idle = false"
            " WHERE session_id = ANY(%s)",
            (doomed,),
        )
    return len(doomed)


_SELECT_LEASE_AND_SESSION = """
SELECT (SELECT state FROM session_leases WHERE session_id = %(id)s),
       s.session_id, s.owner, s.qualifier, s.generation, s.created_at, s.updated_at, s.turns,
       s.state, s.state_expires_when_idle
FROM (SELECT 1) AS one
LEFT JOIN sessions AS s ON s.session_id = %(id)s
"""


def select_lease_and_session(
    conn: Conn, session_id: str
) -> tuple[leases.LeaseState, SessionRecord | None]:
    """The session's lease (its initial state when none is stored) and record, in one
    round trip."""
    row = conn.execute(_SELECT_LEASE_AND_SESSION, {"id": session_id}).fetchone()
    assert row is not None  # one row, always
    lease = codec.load_lease(row[0]) if row[0] is not None else leases.initial_state(session_id)
    return lease, session_from_row(row[1:]) if row[1] is not None else None


def select_lease(conn: Conn, session_id: str) -> leases.LeaseState:
    row = conn.execute(
        "SELECT state FROM session_leases WHERE session_id = %s", (session_id,)
    ).fetchone()
    return codec.load_lease(row[0]) if row is not None else leases.initial_state(session_id)


def write_lease(conn: Conn, session_id: str, state: leases.LeaseState) -> None:
    conn.execute(
        "INSERT INTO session_leases (session_id, state) VALUES (%s, %s::jsonb)"
        " ON CONFLICT (session_id) DO UPDATE SET state = excluded.state",
        (session_id, codec.dump_lease(state)),
    )


# --- background runs ----------------------------------------------------------------------


def insert_run(conn: Conn, record: RunRecord) -> bool:
    row = conn.execute(
        "INSERT INTO runs (token, status, created_at, expires_at, lease_expires_at, record)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (token) DO NOTHING RETURNING 1",
        run_row(record),
    ).fetchone()
    return row is not None


def select_run(conn: Conn, token: str, *, for_update: bool = False) -> RunRecord | None:
    sql = "SELECT record FROM runs WHERE token = %s"
    row = conn.execute(sql + (" FOR UPDATE" if for_update else ""), (token,)).fetchone()
    return codec.load_run(row[0]) if row is not None else None


def apply_run_event(conn: Conn, token: str, event: RunEvent) -> RunRecord:
    """Lock the run's row, apply the core's transition, write it back."""
    record = select_run(conn, token, for_update=True)
    if record is None:
        raise RunNotFound(token)
    new = background.apply(record, event)
    conn.execute(
        "UPDATE runs SET status = %s, created_at = %s, expires_at = %s,"
        " lease_expires_at = %s, record = %s::jsonb WHERE token = %s",
        (*run_row(new)[1:], token),
    )
    return new


# --- last seen ----------------------------------------------------------------------------

LIST_LAST_SEEN = """
SELECT l.channel, l.conversation_id, l.seen_at, l.identity, l.native_id
FROM identities AS i
JOIN last_seen AS l ON l.channel = i.channel AND l.native_id = i.native_id
WHERE i.isolation_key = %(key)s
UNION ALL
SELECT l.channel, l.conversation_id, l.seen_at, l.identity, l.native_id
FROM last_seen AS l
WHERE l.isolation_key = %(key)s AND NOT EXISTS (
    SELECT 1 FROM identities AS i WHERE i.channel = l.channel AND i.native_id = l.native_id
)
ORDER BY 3 DESC, 1, 5, 2
"""


def upsert_last_seen(conn: Conn, isolation_key: str, seen: LastSeen) -> None:
    conn.execute(
        "INSERT INTO last_seen (channel, native_id, conversation_id, isolation_key,"
        " seen_at, identity) VALUES (%s, %s, %s, %s, %s, %s::jsonb)"
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


# --- the outbox ---------------------------------------------------------------------------


def insert_deliveries(conn: Conn, rows: Sequence[tuple[Any, ...]], *, notify: str) -> None:
    """Insert-if-absent by id, and wake the replicas' idle delivery workers (``NOTIFY`` is
    sent at commit, once per transaction and channel however many calls asked)."""
    if not rows:
        return
    conn.execute("SELECT pg_notify(%s, '')", (notify,))
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO deliveries (delivery_id, status, next_attempt_at, created_at,"
            " updated_at, record) VALUES (%s, %s, %s, %s, %s, %s::jsonb)"
            " ON CONFLICT (delivery_id) DO NOTHING",
            rows,
        )


UPDATE_DELIVERY = (
    "UPDATE deliveries SET status = %s, next_attempt_at = %s, updated_at = %s,"
    " record = %s::jsonb WHERE delivery_id = %s"
)


def update_row(d: Delivery) -> tuple[Any, ...]:
    return (d.status.value, d.next_attempt_at, d.updated_at, codec.dump(d), d.delivery_id)


def update_delivery(conn: Conn, d: Delivery) -> None:
    conn.execute(UPDATE_DELIVERY, update_row(d))


def select_delivery(conn: Conn, delivery_id: str, *, for_update: bool = False) -> Delivery | None:
    sql = "SELECT record FROM deliveries WHERE delivery_id = %s"
    row = conn.execute(sql + (" FOR UPDATE" if for_update else ""), (delivery_id,)).fetchone()
    return codec.load_delivery(row[0]) if row is not None else None


def select_deliveries_for_update(conn: Conn, ids: Iterable[str]) -> dict[str, Delivery]:
    """The deliveries among ``ids`` that exist, by id, locked. Rows are locked in id order,
    so two batches over overlapping deliveries queue behind each other, not deadlock."""
    rows = conn.execute(
        "SELECT record FROM deliveries WHERE delivery_id = ANY(%s) ORDER BY delivery_id FOR UPDATE",
        (sorted(ids),),
    ).fetchall()
    found = (codec.load_delivery(row[0]) for row in rows)
    return {d.delivery_id: d for d in found}


def update_deliveries(conn: Conn, changed: Sequence[Delivery]) -> None:
    if not changed:
        return
    with conn.cursor() as cursor:
        cursor.executemany(UPDATE_DELIVERY, [update_row(d) for d in changed])


# Rows another claimer holds locked are skipped, not waited for: replicas claim side by side
# and a slow one never holds up another's deliveries.
CLAIM_DUE = """
SELECT record FROM deliveries
WHERE status IN ('scheduled', 'failed') AND next_attempt_at <= %s
ORDER BY next_attempt_at, created_at, delivery_id
LIMIT %s
FOR UPDATE SKIP LOCKED
"""


# --- channel records ----------------------------------------------------------------------

CHANNEL_RECORD_COLUMNS = "channel, kind, key, owner, created_at, expires_at, value"

# The primary key (channel, kind, key) orders and bounds the scan; no value is read.
LIST_CHANNEL_RECORD_OWNERS_FROM_START = """
SELECT key, owner FROM channel_records
WHERE channel = %s AND kind = %s
ORDER BY key
LIMIT %s
"""
LIST_CHANNEL_RECORD_OWNERS_AFTER = """
SELECT key, owner FROM channel_records
WHERE channel = %s AND kind = %s AND key > %s
ORDER BY key
LIMIT %s
"""


def put_channel_records(conn: Conn, rows: Sequence[tuple[Any, ...]]) -> None:
    if not rows:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO channel_records (channel, kind, key, owner, created_at, expires_at,"
            " value) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)"
            " ON CONFLICT (channel, kind, key) DO UPDATE SET owner = excluded.owner,"
            " created_at = excluded.created_at, expires_at = excluded.expires_at,"
            " value = excluded.value",
            rows,
        )


def insert_channel_record(conn: Conn, row: tuple[Any, ...]) -> bool:
    """Insert unless present; whether it inserted. A concurrent insert of the same key in
    another transaction waits for that one to end, then sees the key present."""
    found = conn.execute(
        "INSERT INTO channel_records (channel, kind, key, owner, created_at, expires_at, value)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)"
        " ON CONFLICT (channel, kind, key) DO NOTHING RETURNING 1",
        row,
    ).fetchone()
    return found is not None
