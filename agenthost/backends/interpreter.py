"""The interpreter of the core's turn generators: it performs effects and decides nothing.

Besides answering effects it keeps three promises the core cannot keep without I/O:
the lease of a run that is cancelled mid-way (a caller hung up, a shutdown) is released
or withdrawn, shielded from that cancellation; the leases of running targets are renewed
(:meth:`TurnInterpreter.renew_leases`, one task for the process, which the host runs) and a
run is stopped when its lease is lost or an interrupt is requested; and a release wakes the
runs waiting in this process at once, instead of at their next poll.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Protocol, TypeVar

import anyio
import attrs
from opentelemetry import trace

from agenthost.backends import tracing
from agenthost.backends.asyncio_bridge import StopScope, stop_scope
from agenthost.backends.linking import IdentityLinker
from agenthost.backends.targets import TargetAdapter, TargetCall, UpdateSink
from agenthost.sansio_core import effects as fx
from agenthost.sansio_core import leases, opening
from agenthost.sansio_core.authorization import Denied
from agenthost.sansio_core.types import ChannelIdentity, ChannelRequest
from agenthost.stores.base import FinishedTurn, Store, TurnWrites

log = logging.getLogger("agenthost.turns")

OutcomeT = TypeVar("OutcomeT")

IdentityResolver = Callable[[ChannelIdentity], "str | Awaitable[str | None] | None"]
RunHook = Callable[..., "ChannelRequest | Awaitable[ChannelRequest | None] | None"]


class LocalRuns:
    """What this process knows of the runs it hosts: their stop scopes and lease waiters."""

    def __init__(self) -> None:
        self._scopes: dict[str, StopScope] = {}
        self._released: dict[str, anyio.Event] = {}
        self._holding: dict[str, str] = {}  # run id -> session id, while its target runs
        self.releases = 0  # how many leases this process released, ever

    def register(self, run_id: str, scope: StopScope, session_id: str) -> None:
        """A run's target starts, holding ``session_id``'s lease."""
        self._scopes[run_id] = scope
        self._holding[run_id] = session_id

    def unregister(self, run_id: str) -> None:
        self._scopes.pop(run_id, None)
        self._holding.pop(run_id, None)

    def holding(self) -> list[tuple[str, str]]:
        """``(run id, session id)`` of every lease held by a target running here."""
        return list(self._holding.items())

    def cancel(self, run_id: str) -> bool:
        scope = self._scopes.get(run_id)
        if scope is None:
            return False
        scope.cancel()
        return True

    def released(self, session_id: str) -> anyio.Event:
        event = self._released.get(session_id)
        if event is None:
            event = self._released[session_id] = anyio.Event()
        return event

    def notify_released(self, session_id: str) -> None:
        self.releases += 1
        event = self._released.pop(session_id, None)
        if event is not None:
            event.set()


@attrs.define
class _DrivenTurn:
    """The turn being driven: what its effects are performed with, and which lease it
    holds or waits for, for cleanup on cancel."""

    on_update: UpdateSink | None
    protocol_request: Any
    on_request: Callable[[ChannelRequest], None] | None
    finisher: TurnFinisher | None
    # Whether spans are recorded, asked once per turn rather than once per span.
    traced: bool
    session_id: str | None = None
    run_id: str | None = None
    holding: bool = False
    waiting: bool = False
    # Taken before each lease call, so a release landing between the store's "wait" answer
    # and the wait itself still wakes this run.
    wakeup: anyio.Event | None = None
    waited: bool = False  # the run waited for the lease at least once
    # The target's run and its answer, for a TurnFinisher's writes.
    ran: tuple[fx.RunTarget, fx.TargetSucceeded | fx.TargetFailed] | None = None


class TurnFinisher(Protocol):
    """What a turn wrote besides its session, committed with it (``Store.finish_turn``).

    ``writes_for`` is asked once the target has answered, before the session is saved;
    ``finished`` hears what the commit recorded.
    """

    async def writes_for(
        self, ran: fx.RunTarget | None, answer: fx.TargetSucceeded | fx.TargetFailed | None
    ) -> TurnWrites:
        """``ran`` and ``answer`` are ``None`` for a turn that ran no target (a proactive
        message appended to the history)."""
        ...

    def finished(self, result: FinishedTurn) -> None: ...


@attrs.frozen
class InterpreterSettings:
    lease_seconds: float = 30.0
    lease_poll_seconds: float = 0.5


class TurnInterpreter:
    def __init__(
        self,
        *,
        store: Store,
        target: TargetAdapter,
        clock: Callable[[], float],
        local_runs: LocalRuns,
        settings: InterpreterSettings,
        identity_resolver: IdentityResolver | None = None,
        run_hook: RunHook | None = None,
        target_object: Any = None,
        linkers: Sequence[IdentityLinker] = (),
    ) -> None:
        self._store = store
        self._target = target
        self._clock = clock
        self._local = local_runs
        self._settings = settings
        self._identity_resolver = identity_resolver
        self._run_hook = run_hook
        self._target_object = target_object
        self._linkers = tuple(linkers)
        # Whether turns record spans: decided by the host when it starts (a tracer provider
        # is installed before serving), so no turn asks again; ``None`` asks once a turn.
        self.traced: bool | None = None

    def records_spans(self) -> bool:
        """Whether the turn about to be driven records its spans."""
        traced = self.traced
        return tracing.tracing_enabled() if traced is None else traced

    async def drive(
        self,
        turn: Generator[fx.Effect, Any, OutcomeT],
        *,
        on_update: UpdateSink | None = None,
        protocol_request: Any = None,
        on_request: Callable[[ChannelRequest], None] | None = None,
        finisher: TurnFinisher | None = None,
    ) -> OutcomeT:
        """Run a core generator to its outcome, performing each effect it yields.

        ``on_request`` sees each request a ``run_hook`` returns (the hook may choose where
        the reply goes); ``finisher`` adds its writes to the transaction that saves the
        session (a stateless turn has none: it never finishes a run).
        """
        driven = _DrivenTurn(
            on_update, protocol_request, on_request, finisher, self.records_spans()
        )
        answer: Any = None
        try:
            while True:
                try:
                    effect = turn.send(answer)
                except StopIteration as stop:
                    outcome: OutcomeT = stop.value
                    return outcome
                answer = await self._perform(effect, driven)
        finally:
            turn.close()
            if driven.holding or driven.waiting:
                with anyio.CancelScope(shield=True):
                    await self._abandon_lease(driven)

    async def _perform(self, effect: fx.Effect, turn: _DrivenTurn) -> Any:
        kind = type(effect)
        perform = _PERFORMERS.get(kind)
        if perform is None:
            perform = _performer_of(kind)
        return await perform(self, effect, turn)

    async def _load_context(self, effect: fx.LoadContext, turn: _DrivenTurn) -> Any:
        return await self._store.load_context(effect.identity, effect.scope, facts=effect.facts)

    async def _issue_isolation_key(self, effect: fx.IssueIsolationKey, turn: _DrivenTurn) -> Any:
        return await self._store.issue_isolation_key(effect.identity, effect.candidate, effect.now)

    async def _load_alias(self, effect: fx.LoadAlias, turn: _DrivenTurn) -> Any:
        return await self._store.load_alias(effect.scope)

    async def _create_session(self, effect: fx.CreateSession, turn: _DrivenTurn) -> Any:
        return await self._store.create_session(effect.alias, effect.now)

    async def _fork_session(self, effect: fx.ForkSession, turn: _DrivenTurn) -> Any:
        return await self._store.fork_session(effect.source_session_id, effect.alias, effect.now)

    async def _record_last_seen(self, effect: fx.RecordLastSeen, turn: _DrivenTurn) -> Any:
        return await self._store.record_last_seen(effect.isolation_key, effect.seen)

    async def _call_identity_resolver(
        self, effect: fx.CallIdentityResolver, turn: _DrivenTurn
    ) -> Any:
        assert self._identity_resolver is not None
        return await _maybe_await(self._identity_resolver(effect.identity))

    async def _call_run_hook(self, effect: fx.CallRunHook, turn: _DrivenTurn) -> Any:
        assert self._run_hook is not None
        rewritten = await _maybe_await(
            self._run_hook(
                effect.request, target=self._target_object, protocol_request=turn.protocol_request
            )
        )
        request = effect.request if rewritten is None else rewritten
        if turn.on_request is not None:
            turn.on_request(request)
        return request

    async def _acquire_lease(self, effect: fx.AcquireLease, turn: _DrivenTurn) -> Any:
        turn.session_id, turn.run_id, turn.waiting = effect.session_id, effect.run_id, True
        turn.wakeup = self._local.released(effect.session_id)
        answer = await self._store.apply_lease_event(
            effect.session_id,
            leases.Arrive(effect.run_id, effect.strategy, self._clock(), self._ttl),
        )
        return self._track(turn, answer)

    async def _wait_for_lease(self, effect: fx.WaitForLease, turn: _DrivenTurn) -> Any:
        # The session is busy: a lease wait, on the turn's span and in the logs.
        if not turn.waited:  # once a run: /metrics counts runs that waited
            turn.waited = True
            trace.get_current_span().add_event("agenthost.lease_wait")
            log.info("session lease wait", extra={"run_id": effect.run_id})
        if effect.interrupting is not None:
            self._local.cancel(effect.interrupting)
        assert turn.wakeup is not None
        with anyio.move_on_after(self._settings.lease_poll_seconds):
            await turn.wakeup.wait()
        turn.wakeup = self._local.released(effect.session_id)
        answer = await self._store.apply_lease_event(
            effect.session_id, leases.Poll(effect.run_id, self._clock(), self._ttl)
        )
        return self._track(turn, answer)

    async def _append_assistant_message(
        self, effect: fx.AppendAssistantMessage, turn: _DrivenTurn
    ) -> Any:
        return await self._target.append_assistant_message(effect.state, effect.text)

    async def _finish_run(self, effect: fx.FinishRun, turn: _DrivenTurn) -> Any:
        store, finisher = self._store, turn.finisher
        with tracing.span("agenthost.save", enabled=turn.traced) as spanned:
            if finisher is not None:
                if turn.ran is not None:
                    writes = await finisher.writes_for(*turn.ran)
                else:
                    writes = await finisher.writes_for(None, None)
                finished = await store.finish_turn(
                    effect.session_id,
                    effect.run_id,
                    effect.session,
                    self._clock(),
                    writes,
                    creation=effect.creation,
                )
                finisher.finished(finished)
                saved = finished.saved
            else:
                saved = await store.finish_run(
                    effect.session_id,
                    effect.run_id,
                    effect.session,
                    self._clock(),
                    creation=effect.creation,
                )
            spanned.set_attribute("agenthost.saved", saved)
        turn.holding = False
        self._local.notify_released(effect.session_id)
        return saved

    async def _begin_link(self, effect: fx.BeginLink, turn: _DrivenTurn) -> Any:
        return tuple([await linker.begin(effect.identity) for linker in self._linkers])

    async def _complete_link(self, effect: fx.CompleteLink, turn: _DrivenTurn) -> Any:
        for linker in self._linkers:
            if linker.completes_by_command:
                return await linker.complete(
                    effect.challenge_id, effect.proof, identity=effect.identity
                )
        return None

    async def _unlink_identity(self, effect: fx.UnlinkIdentity, turn: _DrivenTurn) -> Any:
        result = await self._store.unlink_identity(effect.identity, effect.new_key, effect.now)
        log.info(
            "unlink", extra={"channel": effect.identity.channel, "reason": result.reason.value}
        )
        return result

    async def _rotate_session(self, effect: fx.RotateSession, turn: _DrivenTurn) -> Any:
        return await self._store.rotate_session(effect.scope, effect.new_session_id, effect.now)

    async def _open_turn(self, effect: fx.OpenTurn, turn: _DrivenTurn) -> opening.Outcome:
        releases_before = self._local.releases
        plan = effect.opening
        with tracing.span(
            "agenthost.resolve_session", enabled=turn.traced, channel=plan.identity.channel
        ) as spanned:
            outcome = await self._store.open_turn(plan)
            if isinstance(outcome, opening.Refused):
                access = outcome.access
                if access is None:
                    refusal = "session_not_found"
                elif isinstance(access, Denied):
                    refusal = access.reason_code
                else:
                    refusal = "link_required"
                spanned.set_attribute("agenthost.access", refusal)
            else:
                spanned.set_attribute("agenthost.access", "allowed")
                spanned.set_attribute("agenthost.session_id", outcome.session_ref.session_id or "")
        # A session the save creates (``opening`` rule 5) has no stored lease yet: nothing to
        # renew while the target runs, nothing to give back if the turn is abandoned.
        if (
            isinstance(outcome, opening.Opened)
            and outcome.lease is not None
            and outcome.creation is None
        ):
            session_id = outcome.session_ref.session_id
            assert session_id is not None
            turn.session_id, turn.run_id = session_id, effect.opening.run_id
            self._track(turn, fx.LeaseAnswer(outcome.lease, outcome.session))
            if turn.waiting:
                # The session id was not known before the trip, so a release that landed
                # during it could not be watched for: if any did, look again at once.
                turn.wakeup = self._local.released(session_id)
                if self._local.releases != releases_before:
                    turn.wakeup = _already_set()
        return outcome

    @property
    def _ttl(self) -> float:
        return self._settings.lease_seconds

    @staticmethod
    def _track(turn: _DrivenTurn, answer: fx.LeaseAnswer) -> fx.LeaseAnswer:
        turn.holding = isinstance(answer.decision, leases.Granted)
        turn.waiting = isinstance(answer.decision, leases.Waiting)
        return answer

    async def _run_target(
        self, effect: fx.RunTarget, turn: _DrivenTurn
    ) -> fx.TargetSucceeded | fx.TargetFailed:
        call = TargetCall(effect.request, effect.session_ref, effect.session_state, turn.on_update)
        answer: fx.TargetSucceeded | fx.TargetFailed
        # Only a lease's holder is ever stopped (its lease lost, an interrupt): a run
        # holding none (stateless, or in a session its save creates) needs no stop scope,
        # and enters none (what one costs: asyncio_bridge.stop_scope).
        stoppable = stop_scope() if turn.holding else None
        async with _UNSTOPPABLE if stoppable is None else stoppable as run_scope:
            with tracing.span("agenthost.run", enabled=turn.traced) as spanned:
                if stoppable is not None:
                    assert turn.session_id is not None
                    # renew_leases keeps its lease, an interrupt or a lost lease stops it
                    self._local.register(effect.run_id, stoppable, turn.session_id)
                try:
                    done = await self._target.run(call)
                    answer = fx.TargetSucceeded(
                        done.result,
                        done.text,
                        done.new_state,
                        self._clock(),
                        done.state_expires_when_idle,
                    )
                except Exception as exc:
                    # The error's text may quote the user's input: log its type only.
                    log.warning(
                        "target failed",
                        extra={"run_id": effect.run_id, "error_type": type(exc).__name__},
                    )
                    answer = fx.TargetFailed(f"the target raised {type(exc).__name__}")
                finally:
                    if stoppable is not None:
                        self._local.unregister(effect.run_id)
                spanned.set_attribute(
                    "agenthost.outcome",
                    "succeeded" if isinstance(answer, fx.TargetSucceeded) else "failed",
                )
        if run_scope.cancelled_caught:
            answer = fx.TargetFailed("the run was interrupted", cancelled=True)
        turn.ran = (effect, answer)
        return answer

    async def renew_leases(self) -> None:
        """Renew, every third of the lease time, the lease of every target running in this
        process; stop a run whose lease was lost or whose session asked it to stop.

        One task for the whole process rather than one per run: the renewals of one round
        go to the store together (and commit together where the store groups commits).
        """
        while True:
            await anyio.sleep(self._ttl / 3)
            holding = self._local.holding()
            if holding:
                async with anyio.create_task_group() as renewals:
                    for run_id, session_id in holding:
                        renewals.start_soon(self._renew, session_id, run_id)

    async def _renew(self, session_id: str, run_id: str) -> None:
        try:
            answer = await self._store.apply_lease_event(
                session_id, leases.Renew(run_id, self._clock(), self._ttl)
            )
        except Exception:
            # The next round tries again; a run whose lease lapses meanwhile saves nothing.
            log.warning("lease renewal failed", extra={"run_id": run_id}, exc_info=True)
            return
        decision = answer.decision
        if isinstance(decision, leases.LeaseLost) or (
            isinstance(decision, leases.Renewed) and decision.interrupt_requested
        ):
            log.info(
                "run stopped by its session lease",
                extra={"run_id": run_id, "lease": type(decision).__name__},
            )
            self._local.cancel(run_id)

    async def _abandon_lease(self, turn: _DrivenTurn) -> None:
        assert turn.session_id is not None and turn.run_id is not None
        if turn.holding:
            await self._store.finish_run(turn.session_id, turn.run_id, None, self._clock())
            self._local.notify_released(turn.session_id)
        else:
            await self._store.apply_lease_event(
                turn.session_id, leases.Withdraw(turn.run_id, self._clock())
            )
        turn.holding = turn.waiting = False


Performer = Callable[[TurnInterpreter, Any, _DrivenTurn], Awaitable[Any]]

# Each effect type's performer, looked up by the effect's type: one dict look-up a step,
# where a chain of isinstance checks cost a dozen for a turn's later effects.
_PERFORMERS: dict[type, Performer] = {
    fx.LoadContext: TurnInterpreter._load_context,
    fx.IssueIsolationKey: TurnInterpreter._issue_isolation_key,
    fx.LoadAlias: TurnInterpreter._load_alias,
    fx.CreateSession: TurnInterpreter._create_session,
    fx.ForkSession: TurnInterpreter._fork_session,
    fx.RecordLastSeen: TurnInterpreter._record_last_seen,
    fx.CallIdentityResolver: TurnInterpreter._call_identity_resolver,
    fx.CallRunHook: TurnInterpreter._call_run_hook,
    fx.OpenTurn: TurnInterpreter._open_turn,
    fx.AcquireLease: TurnInterpreter._acquire_lease,
    fx.WaitForLease: TurnInterpreter._wait_for_lease,
    fx.RunTarget: TurnInterpreter._run_target,
    fx.AppendAssistantMessage: TurnInterpreter._append_assistant_message,
    fx.FinishRun: TurnInterpreter._finish_run,
    fx.BeginLink: TurnInterpreter._begin_link,
    fx.CompleteLink: TurnInterpreter._complete_link,
    fx.UnlinkIdentity: TurnInterpreter._unlink_identity,
    fx.RotateSession: TurnInterpreter._rotate_session,
}


def _performer_of(kind: type) -> Performer:
    """The performer of a subclass of an effect type (its nearest base's), else TypeError."""
    for base in kind.__mro__:
        perform = _PERFORMERS.get(base)
        if perform is not None:
            return perform
    raise TypeError(f"no interpreter for effect {kind.__name__}")


class _Unstoppable:
    """In place of the stop scope of a run nothing can stop (it holds no lease)."""

    cancelled_caught = False

    def cancel(self) -> None:
        return None

    async def __aenter__(self) -> _Unstoppable:
        return self

    async def __aexit__(self, *exc_info: object) -> bool:
        return False


_UNSTOPPABLE = _Unstoppable()


def _already_set() -> anyio.Event:
    event = anyio.Event()
    event.set()
    return event


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
