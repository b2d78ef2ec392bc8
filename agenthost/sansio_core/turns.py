"""The turn lifecycle: from an inbound request to a finished run, as effects.

Rules:

1. The order is fixed: resolve the identity -> authorize -> run hook -> resolve the
   session -> take the session lease -> restore the session -> run -> save the session
   only if the run succeeded -> release the lease. A failed or cancelled run never changes
   the saved session, so its input cannot poison later turns.
2. Authorization (``authorization.py``) runs on every request, right after the identity
   is resolved and before anything else: a denied or not-yet-linked sender never reaches
   the run hook, a session or the target, and a new identity it refuses is not even
   given a key. What it needs of linking comes in the same round trip as the identity.
3. A refused identity, a denied or unlinked sender, a missing ``required`` session and a
   busy ``reject`` session end the turn before the target runs, with an outcome that says
   which.
4. A host command (``commands.py``) is answered by :func:`run_command` instead of a turn:
   it is authorized the same way and never reaches the target.
5. A turn is split in two so background runs can record the resolved turn before running:
   :func:`resolve_turn` (identity, authorization, hook, session) and :func:`execute_turn`
   (lease, run, save). :func:`run_turn` is both.
6. With ``record_last_seen`` (the host has a channel that can push), every authorized
   request records where its user was seen, in one write, once its key is known: routing
   reads these records to find the user's ``active`` channel and conversations.
7. A request whose ``response_target`` is not ``originating`` runs in the background
   (:func:`runs_in_background`): the originating wire answers with the token, the reply
   is pushed when the run completes.
8. A background run stores the request as it arrived, not as the hook rewrote it (a hook
   may build values no store can keep, such as a workflow's typed input), and
   :func:`start_background_turn` runs the hook again when the run starts.
9. A proactive message from application code (:func:`record_proactive_message`) is
   recorded in the user's direct session like a turn: under the session lease (it waits
   for a run in progress, it never interrupts one), appended by the target's adapter and
   saved on release, so a later turn sees it in the history.
10. A foreground turn that needs no application callback before it runs (no custom
   resolver, no run hook) opens in one store round trip (``opening.py``): the
   same decisions as :func:`resolve_turn` and the lease arrival, applied by the store in
   one transaction. With the save and release in one more, such a turn costs two trips.
11. A background request that needs no such callback is recorded the same way
   (:func:`record_background_turn`): the decisions of :func:`resolve_turn`, and its run's
   record instead of the lease arrival, in one transaction.

Each function is a generator: it yields effects from ``effects.py``, receives their answers
through ``send``, and returns its outcome. Fresh ids are derived from ``run_id`` (fresh
entropy supplied by the caller) and time comes in as ``now``.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from typing import Any

import attrs

from agenthost.sansio_core import (
    authorization,
    background,
    commands,
    identity,
    leases,
    link_codes,
    opening,
    routing,
    sessions,
)
from agenthost.sansio_core import effects as fx
from agenthost.sansio_core.authorization import AccessSettings, Denied, LinkRequired
from agenthost.sansio_core.commands import CommandCatalog, CommandReply, ParsedCommand
from agenthost.sansio_core.types import (
    ChannelRequest,
    HostedRunResult,
    MultitaskStrategy,
    SessionMode,
    SessionRef,
)
from agenthost.sansio_core.values import builder, builds_fast

TurnGenerator = Generator[fx.Effect, Any, Any]


class RefusalReason(enum.Enum):
    IDENTITY_REFUSED = "identity_refused"
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_BUSY = "session_busy"
    DENIED = "denied"  # the allowlist refused the sender (``access`` says why, for logs)
    LINK_REQUIRED = "link_required"  # the sender must link first (``access`` says how)
    TARGET_NOT_ALLOWED = "target_not_allowed"  # the caller may not choose where replies go


@builds_fast
@attrs.frozen
class ResolvedTurn:
    """A request whose identity and session are settled, ready to run (now or later)."""

    request: ChannelRequest
    session_ref: SessionRef


@builds_fast
@attrs.frozen
class TurnCompleted:
    result: HostedRunResult
    saved: bool


@builds_fast
@attrs.frozen
class TurnFailed:
    error: str
    session_ref: SessionRef
    cancelled: bool = False


@attrs.frozen
class TurnRefused:
    """The turn ended before the target ran.

    ``detail`` is for logs and developers. For ``DENIED`` and ``LINK_REQUIRED``, ``access``
    carries the decision: show the user ``user_message`` (bland for a denial) and nothing
    else; ``Denied.log_details`` belong in structured logs only.
    """

    reason: RefusalReason
    detail: str
    access: Denied | LinkRequired | None = None

    @property
    def user_message(self) -> str | None:
        return self.access.user_message if self.access is not None else None


TurnOutcome = TurnCompleted | TurnFailed | TurnRefused

# The values every turn builds, built without the trip through ``type.__call__``.
_opening = builder(opening.Opening)
_open_turn_effect = builder(fx.OpenTurn)
_run_target = builder(fx.RunTarget)
_finish_run = builder(fx.FinishRun)
_hosted_run_result = builder(HostedRunResult)
_turn_completed = builder(TurnCompleted)


@attrs.frozen
class MessageRecorded:
    """A proactive message was appended to ``session_ref``'s session (``saved`` says if the
    save landed: it does not when the lease was lost meanwhile)."""

    session_ref: SessionRef
    saved: bool


@attrs.frozen
class TurnSettings:
    """The host's settings that shape a turn."""

    custom_resolver: bool = False
    run_hook: bool = False
    default_multitask: MultitaskStrategy = MultitaskStrategy.ENQUEUE
    access: AccessSettings = attrs.field(factory=AccessSettings)
    commands: CommandCatalog = attrs.field(factory=CommandCatalog)
    record_last_seen: bool = False
    lease_seconds: float = 30.0  # how long a session lease lasts unless renewed


def runs_in_background(request: ChannelRequest) -> bool:
    """Whether the request's answer is a continuation token rather than the reply."""
    return request.background or not request.response_target.is_originating


def _last_seen(
    request: ChannelRequest, isolation_key: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, None]:
    if settings.record_last_seen:
        seen = routing.LastSeen(
            request.channel, request.identity, request.session.conversation_id, now
        )
        yield fx.RecordLastSeen(isolation_key, seen)


def resolve_turn(
    request: ChannelRequest, *, run_id: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, ResolvedTurn | TurnRefused]:
    """Settle who is asking, whether they may, and which session the request runs in."""
    scope, session_key = sessions.scope_for(request, fresh_key=f"s_{run_id}")
    access = settings.access.for_channel(request.channel)
    is_direct = request.session.is_direct

    if settings.custom_resolver:
        isolation_key = yield fx.CallIdentityResolver(request.identity)
        if isolation_key is None:
            return TurnRefused(RefusalReason.IDENTITY_REFUSED, "the identity resolver refused")
        refused = _refusal(
            authorization.authorize(access, request.identity, None, is_direct=is_direct)
        )
        if refused is not None:
            return refused
        alias = None
        alias_known = False
    else:
        context: fx.RequestContext = yield fx.LoadContext(
            request.identity, scope, facts=access.needs_facts
        )
        refused = _refusal(
            authorization.authorize(access, request.identity, context.facts, is_direct=is_direct)
        )
        if refused is not None:
            return refused  # before a key is issued: a refused stranger leaves no trace
        isolation_key = context.isolation_key
        alias = context.alias
        alias_known = isolation_key is not None
        if isolation_key is None:
            isolation_key = yield fx.IssueIsolationKey(
                request.identity, identity.candidate_isolation_key(request.identity, run_id), now
            )
    yield from _last_seen(request, isolation_key, now, settings)

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
    return (
        yield from _run_under_lease(
            request, ref, lease.decision, lease.session, run_id=run_id, now=now
        )
    )


def _run_under_lease(
    request: ChannelRequest,
    ref: SessionRef,
    decision: leases.LeaseDecision,
    record: sessions.SessionRecord | None,
    *,
    run_id: str,
    now: float,
) -> Generator[fx.Effect, Any, TurnOutcome]:
    """From the lease's first answer (``decision``, with the session ``record`` when granted):
    wait for it, run the target, save on success, release."""
    assert ref.session_id is not None
    if not isinstance(decision, leases.Granted):
        while isinstance(decision, leases.Waiting):
            lease = yield fx.WaitForLease(ref.session_id, run_id, decision.interrupting)
            decision, record = lease.decision, lease.session
        if isinstance(decision, leases.Rejected):
            return TurnRefused(RefusalReason.SESSION_BUSY, "the session is busy with another run")
        if not isinstance(decision, leases.Granted):  # pragma: no cover - table forbids it
            raise AssertionError(f"unexpected lease decision {decision!r}")

    state = record.state if record is not None else None
    answer = yield _run_target(request, ref, state, run_id)
    saved: bool = yield _finish_run(ref.session_id, run_id, _to_save(answer, record, now))
    return _outcome(answer, ref, saved=saved)


def _to_save(
    answer: fx.TargetSucceeded | fx.TargetFailed,
    record: sessions.SessionRecord | None,
    now: float,
) -> sessions.SessionRecord | None:
    """The session to save once the target answered ``answer`` (rule 1: only on success)."""
    if record is None or not isinstance(answer, fx.TargetSucceeded):
        return None
    finished_at = answer.finished_at if answer.finished_at is not None else now
    return sessions.after_successful_run(
        record, answer.new_state, finished_at, expires_when_idle=answer.state_expires_when_idle
    )


def opens_in_one_trip(request: ChannelRequest, settings: TurnSettings) -> bool:
    """Whether a foreground turn can open with :class:`effects.OpenTurn` (rule 10)."""
    return not settings.custom_resolver and not settings.run_hook


def open_turn(
    request: ChannelRequest, *, run_id: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, TurnOutcome]:
    """A whole foreground turn opened in one round trip (rule 10), then run as usual."""
    plan = _opening_plan(request, run_id, now, settings, None)
    opened: opening.Outcome = yield _open_turn_effect(plan)
    if isinstance(opened, opening.Refused):
        return _opening_refusal(opened)
    ref, lease, record = opened.session_ref, opened.lease, opened.session
    if lease is None:
        answer = yield _run_target(request, ref, None, run_id)
        return _outcome(answer, ref, saved=False)
    if not isinstance(lease, leases.Granted):
        # (never a Creation: a session only this turn can name is granted at once)
        return (yield from _run_under_lease(request, ref, lease, record, run_id=run_id, now=now))
    # Granted at once, the usual case: ``_run_under_lease``'s last steps written out here,
    # because delegating to it puts one more generator frame under each of the two effects.
    assert ref.session_id is not None
    state = record.state if record is not None else None
    answer = yield _run_target(request, ref, state, run_id)
    # ``opened.creation``: the session this save creates (``opening`` rule 5).
    to_save = _to_save(answer, record, now)
    saved: bool = yield _finish_run(ref.session_id, run_id, to_save, opened.creation)
    return _outcome(answer, ref, saved=saved)


def record_background_turn(
    request: ChannelRequest,
    *,
    run_id: str,
    now: float,
    settings: TurnSettings,
    max_attempts: int,
) -> Generator[fx.Effect, Any, background.RunRecord | TurnRefused]:
    """A background request's turn settled and its run recorded in one round trip (rule
    11): the run's record (token ``run_id``), written, or why the request was refused."""
    plan = _opening_plan(
        request, run_id, now, settings, opening.BackgroundRun(request, max_attempts)
    )
    opened: opening.Outcome = yield _open_turn_effect(plan)
    if isinstance(opened, opening.Refused):
        return _opening_refusal(opened)
    assert opened.run is not None  # a background opening always names its run
    return opened.run


def _opening_plan(
    request: ChannelRequest,
    run_id: str,
    now: float,
    settings: TurnSettings,
    background_run: opening.BackgroundRun | None,
) -> opening.Opening:
    scope, session_key = sessions.scope_for(request, fresh_key=f"s_{run_id}")
    fork_scope = sessions.fork_scope_for(request)
    if fork_scope is not None:
        session_key = request.session.fork_key
    seen = None
    if settings.record_last_seen:
        seen = routing.LastSeen(
            request.channel, request.identity, request.session.conversation_id, now
        )
    # Positional: keyword matching for fifteen fields cost more than the value's own init.
    return _opening(
        request.identity,  # identity
        scope,
        session_key,
        request.session_mode,
        settings.access.for_channel(request.channel),  # access
        request.session.is_direct,  # is_direct
        run_id,
        request.multitask or settings.default_multitask,  # strategy
        now,
        seen,  # last_seen
        settings.lease_seconds,
        fork_scope,
        request.session.key is not None,  # has_source_key
        # create_at_finish: never for a background run, written with its session
        request.session.private_until_reply and background_run is None,
        background_run,
    )


def _opening_refusal(refused: opening.Refused) -> TurnRefused:
    if refused.access is None:
        return TurnRefused(RefusalReason.SESSION_NOT_FOUND, "no session matches the request")
    refusal = _refusal(refused.access)
    assert refusal is not None
    return refusal


def record_proactive_message(
    isolation_key: str, text: str, *, run_id: str, now: float
) -> Generator[fx.Effect, Any, MessageRecorded]:
    """Record an assistant message sent from application code in the user's direct session.

    The session is created if the user has none. The lease is taken with ``enqueue`` whatever
    the host's default, so the message waits for a run in progress instead of stopping it or
    being refused.
    """
    scope = sessions.ScopeKey(isolation_key, sessions.DIRECT)
    alias = yield fx.LoadAlias(scope)
    decision = sessions.resolve(
        SessionMode.AUTO, scope, alias, new_session_id=f"s_{run_id}", now=now
    )
    if isinstance(decision, sessions.CreateSession):
        alias = yield fx.CreateSession(decision.alias, now)
    elif isinstance(decision, sessions.UseSession):
        alias = decision.alias
    else:  # pragma: no cover - an owned scope in ``auto`` always has a session
        raise AssertionError(f"unexpected session decision {decision!r}")
    assert alias is not None
    ref = SessionRef(isolation_key, alias.session_id, None)

    lease: fx.LeaseAnswer = yield fx.AcquireLease(
        alias.session_id, run_id, MultitaskStrategy.ENQUEUE
    )
    while isinstance(lease.decision, leases.Waiting):
        lease = yield fx.WaitForLease(alias.session_id, run_id, lease.decision.interrupting)
    if not isinstance(lease.decision, leases.Granted):  # pragma: no cover - enqueue waits
        raise AssertionError(f"unexpected lease decision {lease.decision!r}")

    record = lease.session
    to_save = None
    if record is not None:
        state = yield fx.AppendAssistantMessage(ref, record.state, text)
        # The message does not change what the state is: it expires when idle as before.
        to_save = sessions.after_successful_run(
            record, state, now, expires_when_idle=record.state_expires_when_idle
        )
    saved: bool = yield fx.FinishRun(alias.session_id, run_id, to_save)
    return MessageRecorded(ref, saved)


def start_background_turn(
    request: ChannelRequest,
    session_ref: SessionRef,
    *,
    run_id: str,
    now: float,
    settings: TurnSettings,
) -> Generator[fx.Effect, Any, TurnOutcome]:
    """Run a stored background request: the hook again, then :func:`execute_turn`."""
    if settings.run_hook:
        request = yield fx.CallRunHook(request, session_ref.isolation_key)
    turn = ResolvedTurn(request, session_ref)
    return (yield from execute_turn(turn, run_id=run_id, now=now, settings=settings))


def run_turn(
    request: ChannelRequest,
    *,
    run_id: str,
    now: float,
    settings: TurnSettings,
    bot_name: str | None = None,
) -> Generator[fx.Effect, Any, TurnOutcome]:
    """A whole foreground turn: :func:`resolve_turn` then :func:`execute_turn`.

    A request that carries a host command is answered by :func:`run_command` instead;
    ``bot_name`` is the channel's bot name, for ``/command@bot``.

    It picks the generator that runs the turn and returns it, rather than delegating to it
    with ``yield from``: every effect of a turn would pass through one more frame.
    """
    command = commands.command_of(request, settings.commands, bot_name)
    if command is not None:
        return run_command(request, command, run_id=run_id, now=now, settings=settings)
    if opens_in_one_trip(request, settings):
        return open_turn(request, run_id=run_id, now=now, settings=settings)
    return _stepwise_turn(request, run_id=run_id, now=now, settings=settings)


def _stepwise_turn(
    request: ChannelRequest, *, run_id: str, now: float, settings: TurnSettings
) -> Generator[fx.Effect, Any, TurnOutcome]:
    resolved = yield from resolve_turn(request, run_id=run_id, now=now, settings=settings)
    if isinstance(resolved, TurnRefused):
        return resolved
    return (yield from execute_turn(resolved, run_id=run_id, now=now, settings=settings))


def run_command(
    request: ChannelRequest,
    command: ParsedCommand,
    *,
    run_id: str,
    now: float,
    settings: TurnSettings,
) -> Generator[fx.Effect, Any, TurnCompleted | TurnRefused]:
    """Answer a host command: authorize it like a message, perform it, word the reply.

    The reply is a :class:`TurnCompleted` whose result is a ``commands.CommandReply``
    and whose session is stateless (nothing was run or saved).
    """
    access = settings.access.for_channel(request.channel)
    who = request.identity
    facts = None
    if settings.custom_resolver:
        isolation_key = yield fx.CallIdentityResolver(who)
        if isolation_key is None:
            return TurnRefused(RefusalReason.IDENTITY_REFUSED, "the identity resolver refused")
    else:
        context: fx.RequestContext = yield fx.LoadContext(who, None, facts=True)
        isolation_key, facts = context.isolation_key, context.facts
    decision = authorization.authorize(access, who, facts, is_direct=request.session.is_direct)
    if not commands.permitted(command, decision):
        refused = _refusal(decision)
        assert refused is not None  # every command is permitted to an allowed sender
        return refused
    if isolation_key is None:
        candidate = identity.candidate_isolation_key(who, run_id)
        isolation_key = yield fx.IssueIsolationKey(who, candidate, now)
    assert isolation_key is not None
    yield from _last_seen(request, isolation_key, now, settings)
    text = yield from _perform(
        request, command, isolation_key, run_id=run_id, now=now, settings=settings
    )
    ref = SessionRef(isolation_key, None, request.session.key)
    return TurnCompleted(HostedRunResult(CommandReply(command.name, text), ref, text), saved=False)


def _perform(
    request: ChannelRequest,
    command: ParsedCommand,
    isolation_key: str,
    *,
    run_id: str,
    now: float,
    settings: TurnSettings,
) -> Generator[fx.Effect, Any, str]:
    who = request.identity
    if command.name == commands.HELP:
        return commands.help_answer(settings.commands.for_channel(request.channel))
    if command.name == commands.LINK:
        if not request.session.is_direct:
            return commands.WRITE_TO_ME_DIRECTLY
        if not command.args:
            challenges = yield fx.BeginLink(who, isolation_key)
            return commands.challenge_answer(challenges)
        code = link_codes.parse_code(command.args)
        if code is None:
            return commands.NOT_A_CODE
        result = yield fx.CompleteLink(who, *code)
        return commands.NO_LINKER_COMPLETES_HERE if result is None else commands.link_answer(result)
    if command.name == commands.UNLINK:
        new_key = identity.candidate_isolation_key(who, run_id)
        return commands.link_answer((yield fx.UnlinkIdentity(who, new_key, now)))
    if command.name == commands.NEW:
        scope, _ = sessions.scope_for(request, fresh_key=f"s_{run_id}")
        if scope is None or (request.session.caller_keyed and request.session.key is None):
            return commands.NOTHING_TO_RESET
        yield fx.RotateSession(scope.owned_by(isolation_key), f"s_{run_id}", now)
        return commands.NEW_CONVERSATION
    raise ValueError(f"no host command is named {command.name!r}")


def _refusal(decision: authorization.AccessDecision) -> TurnRefused | None:
    if isinstance(decision, Denied):
        return TurnRefused(RefusalReason.DENIED, f"denied ({decision.reason_code})", decision)
    if isinstance(decision, LinkRequired):
        return TurnRefused(RefusalReason.LINK_REQUIRED, "the sender must link first", decision)
    return None


def outcome_of(
    answer: fx.TargetSucceeded | fx.TargetFailed, ref: SessionRef, *, saved: bool
) -> TurnCompleted | TurnFailed:
    """The outcome of a turn whose target answered ``answer`` in session ``ref``."""
    return _outcome(answer, ref, saved=saved)


def _outcome(
    answer: fx.TargetSucceeded | fx.TargetFailed, ref: SessionRef, *, saved: bool
) -> TurnCompleted | TurnFailed:
    if isinstance(answer, fx.TargetFailed):
        return TurnFailed(answer.error, ref, cancelled=answer.cancelled)
    return _turn_completed(_hosted_run_result(answer.result, ref, answer.text), saved)
