"""Session resolution: which stored session a request runs in.

Rules:

1. A session is found through an *alias* ``(owner, qualifier) -> session_id``. The owner is
   the user's isolation key, except for ``per_conversation`` scopes where the whole
   conversation owns it.
2. A 1:1 conversation on a host-tracked channel always keys on the user (qualifier
   ``direct``), so once two identities share an isolation key they share the conversation.
3. Caller-supplied keys are untrusted: they are namespaced by channel and owned by the
   authenticated caller, so ``telegram:123`` sent by a Responses caller names a different
   alias than the Telegram user's, and one caller cannot reach another caller's key.
4. ``required`` never creates a session; ``disabled`` runs stateless; ``auto`` creates.
5. A reset rotates the alias to a fresh session; the old session stays stored and readable.
6. A *fork* saves a turn as a new session under ``fork_key``, a copy of the session named by
   ``key`` (which must exist) or a fresh one without a ``key``. The source is never changed,
   so continuing from an older snapshot branches the conversation instead of rewriting it.
7. A state its target marked as *expiring when idle* (a finished workflow's checkpoint:
   the target starts afresh without it) is dropped once the session was last saved ``ttl``
   or more ago and nobody holds or waits for its lease (:func:`idle_state_expired`). Only
   the state goes: the session, its alias and its bookkeeping stay. Any other state (an
   agent's history, a workflow waiting for an answer) never expires this way.

Fresh ids and time come in as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from agenthost.sansio_core.leases import LeaseState
from agenthost.sansio_core.types import ChannelRequest, ConversationScope, SessionMode
from agenthost.sansio_core.values import builder, builds_fast

DIRECT = "direct"


@builds_fast
@attrs.frozen
class ScopeKey:
    """The alias key of a session: who owns it and which of their sessions it is.

    ``owner=None`` means "the requester's isolation key", filled in once it is known.
    """

    owner: str | None
    qualifier: str

    def owned_by(self, isolation_key: str) -> ScopeKey:
        return self if self.owner is not None else _scope_key(isolation_key, self.qualifier)


# Read as globals on every request: ``SessionMode.DISABLED`` goes through the enum's
# metaclass, about ten times the cost (CPython 3.11).
_DISABLED, _REQUIRED = SessionMode.DISABLED, SessionMode.REQUIRED
_PER_USER, _PER_CONVERSATION = ConversationScope.PER_USER, ConversationScope.PER_CONVERSATION

# Most requests are direct: their scope is one value, not one allocation a request.
_REQUESTERS_DIRECT = ScopeKey(None, DIRECT)


@builds_fast
@attrs.frozen
class SessionAlias:
    owner: str
    qualifier: str
    session_id: str
    generation: int
    created_at: float


@builds_fast
@attrs.frozen
class SessionRecord:
    """A stored session: the target's own serialized state (JSON-able) and bookkeeping."""

    session_id: str
    owner: str
    qualifier: str
    generation: int
    created_at: float
    updated_at: float
    state: Mapping[str, Any] | None = None
    turns: int = 0
    # The target may do without ``state`` once the session idles (rule 7).
    state_expires_when_idle: bool = False


def fork_scope_for(request: ChannelRequest) -> ScopeKey | None:
    """The scope a forking request saves into, or ``None`` if it does not fork."""
    if request.session_mode is _DISABLED or request.session.fork_key is None:
        return None
    return ScopeKey(None, f"{request.channel}:key:{request.session.fork_key}")


def scope_for(request: ChannelRequest, *, fresh_key: str) -> tuple[ScopeKey | None, str | None]:
    """The alias scope of a request and the caller-facing session key (if any).

    Returns ``(None, None)`` for a stateless request.
    """
    if request.session_mode is _DISABLED:
        return None, None
    session = request.session
    if session.fork_key is not None and session.key is None:
        return None, None  # a fork with no source starts empty: nothing to look up
    if session.caller_keyed or session.key is not None:
        key = session.key if session.key is not None else fresh_key
        return ScopeKey(None, f"{request.channel}:key:{key}"), key
    conversation = session.conversation_id
    if session.is_direct or conversation is None:
        return _REQUESTERS_DIRECT, None
    scope = request.conversation_scope
    if scope is _PER_USER:
        return _REQUESTERS_DIRECT, None
    if scope is _PER_CONVERSATION:
        return ScopeKey(f"conversation:{request.channel}:{conversation}", "shared"), None
    return ScopeKey(None, f"{request.channel}:conversation:{conversation}"), None


@builds_fast
@attrs.frozen
class UseSession:
    alias: SessionAlias


@builds_fast
@attrs.frozen
class CreateSession:
    alias: SessionAlias


@attrs.frozen
class Stateless:
    pass


@attrs.frozen
class SessionNotFound:
    pass


@builds_fast
@attrs.frozen
class ForkSession:
    """Copy ``source`` into a new session under ``alias``."""

    source: SessionAlias
    alias: SessionAlias


SessionDecision = UseSession | CreateSession | ForkSession | Stateless | SessionNotFound

# Built on every turn: without the trip through ``type.__call__``.
_scope_key = builder(ScopeKey)
_session_alias = builder(SessionAlias)
_use_session = builder(UseSession)
_create_session = builder(CreateSession)
_session_record = builder(SessionRecord)
_fork_session = builder(ForkSession)


def resolve_fork(
    fork_scope: ScopeKey,
    source: SessionAlias | None,
    *,
    has_source_key: bool,
    new_session_id: str,
    now: float,
) -> CreateSession | ForkSession | SessionNotFound:
    """Decide a forking request's session: a copy of its source, or a fresh one."""
    if fork_scope.owner is None:
        raise ValueError("resolve_fork needs a scope whose owner is known")
    alias = _session_alias(fork_scope.owner, fork_scope.qualifier, new_session_id, 1, now)
    if not has_source_key:
        return _create_session(alias)
    if source is None:
        return SessionNotFound()
    return _fork_session(source, alias)


def resolve(
    mode: SessionMode,
    scope: ScopeKey | None,
    alias: SessionAlias | None,
    *,
    new_session_id: str,
    now: float,
) -> SessionDecision:
    """Decide the session of a request from its mode and the alias found (if any)."""
    if mode is _DISABLED or scope is None:
        return Stateless()
    if alias is not None:
        return _use_session(alias)
    if mode is _REQUIRED:
        return SessionNotFound()
    if scope.owner is None:
        raise ValueError("resolve needs a scope whose owner is known")
    return _create_session(_session_alias(scope.owner, scope.qualifier, new_session_id, 1, now))


def rotate(
    scope: ScopeKey, current: SessionAlias | None, *, new_session_id: str, now: float
) -> SessionAlias:
    """The alias after a reset: a fresh session, one generation on."""
    if scope.owner is None:
        raise ValueError("rotate needs a scope whose owner is known")
    generation = current.generation + 1 if current is not None else 1
    return SessionAlias(scope.owner, scope.qualifier, new_session_id, generation, now)


def new_session_record(alias: SessionAlias, now: float) -> SessionRecord:
    return _session_record(
        alias.session_id, alias.owner, alias.qualifier, alias.generation, now, now
    )


def forked_record(source: SessionRecord | None, alias: SessionAlias, now: float) -> SessionRecord:
    """The new session of a fork: the source's state and turn count, under the new alias."""
    record = new_session_record(alias, now)
    if source is None:
        return record
    return attrs.evolve(
        record,
        state=source.state,
        turns=source.turns,
        state_expires_when_idle=source.state_expires_when_idle,
    )


def after_successful_run(
    record: SessionRecord,
    state: Mapping[str, Any] | None,
    now: float,
    *,
    expires_when_idle: bool = False,
) -> SessionRecord:
    """The session to save after a run that succeeded (a failed run saves nothing)."""
    return _session_record(
        record.session_id,
        record.owner,
        record.qualifier,
        record.generation,
        record.created_at,
        now,
        state,
        record.turns + 1,
        expires_when_idle and state is not None,
    )


def idle_state_expired(
    *, expires_when_idle: bool, saved_at: float, lease: LeaseState | None, now: float, ttl: float
) -> bool:
    """Whether a session's state is dropped now (rule 7).

    ``saved_at`` is when the session was last saved (``SessionRecord.updated_at``) and
    ``lease`` its lease as stored (``None``: never taken). A session whose lease has a live
    holder or waiter is in use: its turn may be reading the state, so it is left alone
    and looked at again once the turn has saved (which restarts its idle time).
    """
    if not expires_when_idle or saved_at > now - ttl:
        return False
    return lease is None or not lease.in_use(now)
