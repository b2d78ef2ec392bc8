"""Records as the rows of the SQL stores' tables, and back: one column order per table.

The SQLite and PostgreSQL stores keep the same tables with the same columns; only their SQL
(placeholders, locks, ``jsonb`` casts) differs. What a row holds, in which order, and how a
record is encoded into it (``stores.codec``) is decided here once, for both.
"""

from __future__ import annotations

import json
from typing import Any

from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.delivery import Delivery
from agenthost.sansio_core.linking import LinkRecord, UserFacts
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores import codec
from agenthost.stores.base import ChannelRecord

SESSION_COLUMNS = (
    "session_id, owner, qualifier, generation, created_at, updated_at, turns, state,"
    " state_expires_when_idle"
)


def alias_from_row(row: Any) -> SessionAlias:
    owner, qualifier, session_id, generation, created_at = row
    return SessionAlias(owner, qualifier, session_id, generation, created_at)


def link_from_row(row: Any) -> LinkRecord:
    channel, native, key, anchor_channel, anchor_native, source, previous, created_at = row
    return LinkRecord(
        ChannelIdentity(channel, native),
        key,
        ChannelIdentity(anchor_channel, anchor_native),
        source,
        previous,
        created_at,
    )


def facts_from_json(identities: str | None, claims: str | None) -> UserFacts:
    others = sorted(tuple(pair) for pair in json.loads(identities or "[]"))
    held = {(kind, value) for kind, value in json.loads(claims or "[]")}
    return UserFacts(tuple(ChannelIdentity(ch, native) for ch, native in others), held)


def run_row(record: RunRecord) -> tuple[Any, ...]:
    return (
        record.token,
        record.status.value,
        record.created_at,
        record.expires_at,
        record.lease_expires_at,
        codec.dump_run(record),
    )


def channel_record_row(r: ChannelRecord) -> tuple[Any, ...]:
    return (
        r.channel,
        r.kind,
        r.key,
        r.owner,
        r.created_at,
        r.expires_at,
        codec.to_json(dict(r.value)),
    )


def channel_record_from_row(row: Any) -> ChannelRecord:
    channel, kind, key, owner, created_at, expires_at, value = row
    return ChannelRecord(
        channel=channel,
        kind=kind,
        key=key,
        value=codec.load(value, dict[str, Any]),
        owner=owner,
        created_at=created_at,
        expires_at=expires_at,
    )


_DECODE = object()  # session_from_row's default: decode the row's state column


def session_columns(record: SessionRecord) -> tuple[str, str, int, float, float, int]:
    """A session's columns from ``owner`` to ``turns``, in ``SESSION_COLUMNS`` order."""
    return (
        record.owner,
        record.qualifier,
        record.generation,
        record.created_at,
        record.updated_at,
        record.turns,
    )


def session_from_row(row: Any, state: Any = _DECODE) -> SessionRecord:
    """The session in ``row``; ``state`` is its state column decoded, when the caller has
    done that already."""
    session_id, owner, qualifier, generation, created_at, updated_at, turns, text, expiring = row
    if state is _DECODE:
        state = json.loads(text) if text is not None else None
    return SessionRecord(
        session_id=session_id,
        owner=owner,
        qualifier=qualifier,
        generation=generation,
        created_at=created_at,
        updated_at=updated_at,
        state=state,
        turns=turns,
        state_expires_when_idle=bool(expiring),  # SQLite keeps 0/1
    )


def delivery_row(d: Delivery) -> tuple[Any, ...]:
    return (
        d.delivery_id,
        d.status.value,
        d.next_attempt_at,
        d.created_at,
        d.updated_at,
        codec.dump(d),
    )
