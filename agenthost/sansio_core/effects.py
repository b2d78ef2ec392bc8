"""Effects: what the core asks the backend to perform, and the answers it expects.

A core lifecycle is a generator that yields one of these and receives the answer named in
its docstring. The backend's interpreter performs them (store round trips, user hooks, the
target) and must do nothing else: every decision stays in the core.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from agenthost.sansio_core import leases
from agenthost.sansio_core.linking import UserFacts
from agenthost.sansio_core.opening import Creation, Opening
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    MultitaskStrategy,
    SessionRef,
)
from agenthost.sansio_core.values import builds_fast


@attrs.frozen
class LoadContext:
    """One round trip: the identity's isolation key and, if known, the alias of ``scope``;
    with ``facts``, also what linking established (the user's other identities, claims).

    Answer: :class:`RequestContext`.
    """

    identity: ChannelIdentity
    scope: ScopeKey | None
    facts: bool = False


@builds_fast
@attrs.frozen
class RequestContext:
    isolation_key: str | None
    alias: SessionAlias | None
    facts: UserFacts | None = None  # loaded when asked for and the identity is known


@builds_fast
@attrs.frozen
class OpenTurn:
    """One round trip that opens a foreground turn (see ``opening``): the store applies
    ``opening.decide`` in its transaction. Answer: ``opening.Outcome``."""

    opening: Opening


@attrs.frozen
class CallIdentityResolver:
    """Ask the application's resolver. Answer: ``str`` (isolation key) or ``None`` (refuse)."""

    identity: ChannelIdentity


@attrs.frozen
class IssueIsolationKey:
    """Insert ``candidate`` for the identity unless one exists. Answer: the key that won."""

    identity: ChannelIdentity
    candidate: str
    now: float


@attrs.frozen
class LoadAlias:
    """Answer: :class:`SessionAlias` or ``None``."""

    scope: ScopeKey


@attrs.frozen
class CreateSession:
    """Insert the alias and an empty session unless the alias exists. Answer: the alias that won."""

    alias: SessionAlias
    now: float


@attrs.frozen
class ForkSession:
    """Insert ``alias`` and a session copying ``source_session_id``'s state (unless the alias
    exists). Answer: the alias that won."""

    source_session_id: str
    alias: SessionAlias
    now: float


@attrs.frozen
class RecordLastSeen:
    """Upsert where the user was just seen (routing's ``active`` reads it). Answer: ``None``."""

    isolation_key: str
    seen: LastSeen


@attrs.frozen
class CallRunHook:
    """Let the application rewrite the request. Answer: a :class:`ChannelRequest`."""

    request: ChannelRequest
    isolation_key: str


@attrs.frozen
class AcquireLease:
    """Arrive at the session's lease. Answer: :class:`LeaseAnswer`."""

    session_id: str
    run_id: str
    strategy: MultitaskStrategy


@attrs.frozen
class WaitForLease:
    """Wait until the lease may have changed, then poll it. Answer: :class:`LeaseAnswer`.

    ``interrupting`` names a holder this run asked to stop (the backend may cancel it at
    once when it runs in this process).
    """

    session_id: str
    run_id: str
    interrupting: str | None


@builds_fast
@attrs.frozen
class LeaseAnswer:
    decision: leases.LeaseDecision
    session: SessionRecord | None  # loaded in the same round trip when granted


@builds_fast
@attrs.frozen
class RunTarget:
    """Run the target. Answer: :class:`TargetSucceeded` or :class:`TargetFailed`."""

    request: ChannelRequest
    session_ref: SessionRef
    session_state: Mapping[str, Any] | None
    run_id: str


@builds_fast
@attrs.frozen
class TargetSucceeded:
    result: Any
    text: str
    new_state: Mapping[str, Any] | None
    finished_at: float | None = None  # stamped by the interpreter; the saved session's time
    # ``new_state`` is one the target can start afresh without (a finished workflow's
    # checkpoint): the host may drop it once the session idles (``sessions`` rule 7).
    state_expires_when_idle: bool = False


@builds_fast
@attrs.frozen
class TargetFailed:
    error: str
    cancelled: bool = False


@attrs.frozen
class AppendAssistantMessage:
    """Append an assistant message to a session's stored state, the way the target keeps its
    history (``None`` is an empty session). Answer: the new state (``Mapping`` or ``None``).
    """

    session_ref: SessionRef
    state: Mapping[str, Any] | None
    text: str


@builds_fast
@attrs.frozen
class FinishRun:
    """Save the session (when ``session`` is given) and release the lease, atomically.

    The store saves only while ``run_id`` still holds the lease. Answer: ``bool`` saved.
    ``creation`` is a session the turn's opening left for this write to create
    (``opening.Creation``): its alias, its record (``session`` when given) and its
    released lease are written here, in the same transaction.
    """

    session_id: str
    run_id: str
    session: SessionRecord | None
    creation: Creation | None = None


@attrs.frozen
class BeginLink:
    """Ask every linker for a challenge for ``identity`` (in its direct chat).

    Answer: a tuple of ``linking.LinkChallenge``.
    """

    identity: ChannelIdentity
    isolation_key: str


@attrs.frozen
class CompleteLink:
    """Complete a challenge by command (``/link CODE``) as ``identity``.

    Answer: ``linking.LinkResult``, or ``None`` when no linker completes by command.
    """

    identity: ChannelIdentity
    challenge_id: str
    proof: str


@attrs.frozen
class UnlinkIdentity:
    """Give ``identity`` the fresh key ``new_key`` (see ``linking.plan_unlink``).

    Answer: ``linking.LinkResult``.
    """

    identity: ChannelIdentity
    new_key: str
    now: float


@attrs.frozen
class RotateSession:
    """Point the scope's alias at a fresh session (``/new``). Answer: :class:`SessionAlias`."""

    scope: ScopeKey
    new_session_id: str
    now: float


Effect = (
    LoadContext
    | OpenTurn
    | CallIdentityResolver
    | IssueIsolationKey
    | LoadAlias
    | CreateSession
    | ForkSession
    | RecordLastSeen
    | CallRunHook
    | AcquireLease
    | WaitForLease
    | RunTarget
    | AppendAssistantMessage
    | FinishRun
    | BeginLink
    | CompleteLink
    | UnlinkIdentity
    | RotateSession
)
