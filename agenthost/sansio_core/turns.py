"""The turn lifecycle: from an inbound request to a finished run, as effects.

Rules:

1. The order is fixed: resolve the identity -> run hook -> resolve the session -> take the
   session lease -> restore the session -> run -> save the session only if the run
   succeeded -> release the lease. A failed or cancelled run never changes the saved
   session, so its input cannot poison later turns.
2. A refused identity, a missing ``required`` session and a busy ``reject`` session end
   the turn before the target runs, with an outcome that says which.
3. A turn is split in two so background runs can record the resolved turn before running:
   :func:`resolve_turn` (identity, hook, session) and :func:`execute_turn` (lease, run,
   save). :func:`run_turn` is both.

Each function is a generator: it yields effects from ``effects.py``, receives their answers
through ``send``, and returns its outcome. Fresh ids are derived from ``run_id`` (fresh
entropy supplied by the caller) and time comes in as ``now``.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from typing import Any

import attrs

from agenthost.sansio_core import effects as fx
from agenthost.sansio_core import identity, leases, sessions
from agenthost.sansio_core.types import (
    ChannelRequest,
    HostedRunResult,
    MultitaskStrategy,
    SessionRef,
)

TurnGenerator = Generator[fx.Effect, Any, Any]


class RefusalReason(enum.Enum):
    IDENTITY_REFUSED = "identity_refused"
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_BUSY = "session_busy"


@attrs.frozen
class ResolvedTurn:
    """A request whose identity and session are settled, ready to run (now or later)."""

    request: ChannelRequest
    session_ref: SessionRef


@attrs.frozen
class TurnCompleted:
    result: HostedRunResult
    saved: bool


@attrs.frozen
class TurnFailed:
    error: str
    session_ref: SessionRef
    cancelled: bool = False


@attrs.frozen
class TurnRefused:
    reason: RefusalReason
    detail: str


TurnOutcome = TurnCompleted | TurnFailed | TurnRefused


@attrs.frozen
class TurnSettings:
    """The host's settings that shape a turn."""

    custom_resolver: bool = False
    run_hook: bool = False
    default_multitask: MultitaskStrategy = MultitaskStrategy.ENQUEUE


def resolve_turn(
    request: ChannelRequest, *, run_id: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, ResolvedTurn | TurnRefused]:
    """Settle who is asking and which session the request runs in."""
    scope, session_key = sessions.scope_for(request, fresh_key=f"s_{run_id}")

    if settings.custom_resolver:
        isolation_key = yield fx.CallIdentityResolver(request.identity)
        if isolation_key is None:
            return TurnRefused(RefusalReason.IDENTITY_REFUSED, "the identity resolver refused")
        alias = None
        alias_known = False
    else:
        context: fx.RequestContext = yield fx.LoadContext(request.identity, scope)
        isolation_key = context.isolation_key
        alias = context.alias
        alias_known = isolation_key is not None
        if isolation_key is None:
            isolation_key = yield fx.IssueIsolationKey(
                request.identity, identity.candidate_isolation_key(request.identity, run_id), now
            )

    if settings.run_hook:
        request = yield fx.CallRunHook(request, isolation_key)
        rescoped, session_key = sessions.scope_for(request, fresh_key=f"s_{run_id}")
        if rescoped != scope:
            scope, alias_known = rescoped, False

    if scope is not None:
        scope = scope.owned_by(isolation_key)
        if not alias_known:
            # The one-trip context could not see this alias (a new user, a custom resolver
            # or a request the hook rewrote): look it up now.
            alias = yield fx.LoadAlias(scope)

    fork_scope = sessions.fork_scope_for(request)
    decision: sessions.SessionDecision
    if fork_scope is not None:
        session_key = request.session.fork_key
        decision = sessions.resolve_fork(
            fork_scope.owned_by(isolation_key),
            alias,
            has_source_key=request.session.key is not None,
            new_session_id=f"s_{run_id}",
            now=now,
        )
    else:
        decision = sessions.resolve(
            request.session_mode, scope, alias, new_session_id=f"s_{run_id}", now=now
        )
    if isinstance(decision, sessions.SessionNotFound):
        return TurnRefused(RefusalReason.SESSION_NOT_FOUND, "no session matches the request")
    if isinstance(decision, sessions.Stateless):
        return ResolvedTurn(request, SessionRef(isolation_key, None, session_key))
    if isinstance(decision, sessions.CreateSession):
        alias = yield fx.CreateSession(decision.alias, now)
    elif isinstance(decision, sessions.ForkSession):
        alias = yield fx.ForkSession(decision.source.session_id, decision.alias, now)
    else:
        alias = decision.alias
    assert alias is not None
    return ResolvedTurn(request, SessionRef(isolation_key, alias.session_id, session_key))


def execute_turn(
    turn: ResolvedTurn, *, run_id: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, TurnOutcome]:
    """Take the session lease, run the target, save on success, release."""
    request, ref = turn.request, turn.session_ref
    if ref.session_id is None:
        answer = yield fx.RunTarget(request, ref, None, run_id)
        return _outcome(answer, ref, saved=False)

    strategy = request.multitask or settings.default_multitask
    lease: fx.LeaseAnswer = yield fx.AcquireLease(ref.session_id, run_id, strategy)
    while isinstance(lease.decision, leases.Waiting):
        lease = yield fx.WaitForLease(ref.session_id, run_id, lease.decision.interrupting)
    if isinstance(lease.decision, leases.Rejected):
        return TurnRefused(RefusalReason.SESSION_BUSY, "the session is busy with another run")
    if not isinstance(lease.decision, leases.Granted):  # pragma: no cover - table forbids it
        raise AssertionError(f"unexpected lease decision {lease.decision!r}")

    record = lease.session
    state = record.state if record is not None else None
    answer = yield fx.RunTarget(request, ref, state, run_id)
    to_save = None
    if isinstance(answer, fx.TargetSucceeded) and record is not None:
        finished_at = answer.finished_at if answer.finished_at is not None else now
        to_save = sessions.after_successful_run(record, answer.new_state, finished_at)
    saved: bool = yield fx.FinishRun(ref.session_id, run_id, to_save)
    return _outcome(answer, ref, saved=saved)


def run_turn(
    request: ChannelRequest, *, run_id: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, TurnOutcome]:
    """A whole foreground turn: :func:`resolve_turn` then :func:`execute_turn`."""
    resolved = yield from resolve_turn(request, run_id=run_id, now=now, settings=settings)
    if isinstance(resolved, TurnRefused):
        return resolved
    return (yield from execute_turn(resolved, run_id=run_id, now=now, settings=settings))


def _outcome(
    answer: fx.TargetSucceeded | fx.TargetFailed, ref: SessionRef, *, saved: bool
) -> TurnOutcome:
    if isinstance(answer, fx.TargetFailed):
        return TurnFailed(answer.error, ref, cancelled=answer.cancelled)
    return TurnCompleted(HostedRunResult(answer.result, ref, answer.text), saved=saved)
