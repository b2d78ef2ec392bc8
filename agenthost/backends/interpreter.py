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
    """What this process knows of the runs it hosts: their cancel scopes and lease waiters."""

    def __init__(self) -> None:
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._released: dict[str, anyio.Event] = {}
        self._holding: dict[str, str] = {}  # run id -> session id, while its target runs
        self.releases = 0  # how many leases this process released, ever

    def register(self, run_id: str, scope: anyio.CancelScope, session_id: str | None) -> None:
        """A run's target starts; with ``session_id`` it holds that session's lease."""
        self._scopes[run_id] = scope
        if session_id is not None:
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
class _LeaseGuard:
    """Which lease the turn being driven holds or waits for, for cleanup on cancel."""

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
    # Whether spans are recorded, asked once per turn rather than once per span.
    traced: bool = False


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

    async def drive(
        self,
        turn: Generator[fx.Effect, Any, OutcomeT],
        *,
        on_update: UpdateSink | None = None,
        protocol_request: Any = None,
        on_request: Callable[[ChannelRequest], None] | None = None,
        finisher: TurnFinisher | None = None,
        traced: bool | None = None,
    ) -> OutcomeT:
        """Run a core generator to its outcome, performing each effect it yields.

        ``on_request`` sees each request a ``run_hook`` returns (the hook may choose where
        the reply goes); ``finisher`` adds its writes to the transaction that saves the
        session (a stateless turn has none: it never finishes a run). ``traced`` is
        whether spans are recorded, when the caller has asked already.
        """
        if traced is None:
            traced = tracing.tracing_enabled()
        guard = _LeaseGuard(traced=traced)
        answer: Any = None
        try:
            while True:
                try:
                    effect = turn.send(answer)
                except StopIteration as stop:
                    outcome: OutcomeT = stop.value
                    return outcome
                answer = await self._perform(effect, guard, on_update, protocol_request, finisher)
                if on_request is not None and isinstance(effect, fx.CallRunHook):
                    on_request(answer)
        finally:
            turn.close()
            if guard.holding or guard.waiting:
                with anyio.CancelScope(shield=True):
                    await self._abandon_lease(guard)

    async def _perform(
        self,
        effect: fx.Effect,
        guard: _LeaseGuard,
        on_update: UpdateSink | None,
        protocol_request: Any,
        finisher: TurnFinisher | None,
    ) -> Any:
        store = self._store
        if isinstance(effect, fx.LoadContext):
            return await store.load_context(effect.identity, effect.scope, facts=effect.facts)
        if isinstance(effect, fx.IssueIsolationKey):
            return await store.issue_isolation_key(effect.identity, effect.candidate, effect.now)
        if isinstance(effect, fx.LoadAlias):
            return await store.load_alias(effect.scope)
        if isinstance(effect, fx.CreateSession):
            return await store.create_session(effect.alias, effect.now)
        if isinstance(effect, fx.ForkSession):
            return await store.fork_session(effect.source_session_id, effect.alias, effect.now)
        if isinstance(effect, fx.RecordLastSeen):
            return await store.record_last_seen(effect.isolation_key, effect.seen)
        if isinstance(effect, fx.CallIdentityResolver):
            assert self._identity_resolver is not None
            return await _maybe_await(self._identity_resolver(effect.identity))
        if isinstance(effect, fx.CallRunHook):
            assert self._run_hook is not None
            rewritten = await _maybe_await(
                self._run_hook(
                    effect.request, target=self._target_object, protocol_request=protocol_request
                )
            )
            return effect.request if rewritten is None else rewritten
        if isinstance(effect, fx.OpenTurn):
            return await self._open_turn(effect, guard)
        if isinstance(effect, fx.AcquireLease):
            guard.session_id, guard.run_id, guard.waiting = effect.session_id, effect.run_id, True
            guard.wakeup = self._local.released(effect.session_id)
            answer = await store.apply_lease_event(
                effect.session_id,
                leases.Arrive(effect.run_id, effect.strategy, self._clock(), self._ttl),
            )
            return self._track(guard, answer)
        if isinstance(effect, fx.WaitForLease):
            # The session is busy: a lease wait, on the turn's span and in the logs.
            if not guard.waited:  # once a run: /metrics counts runs that waited
                guard.waited = True
                trace.get_current_span().add_event("agenthost.lease_wait")
                log.info("session lease wait", extra={"run_id": effect.run_id})
            if effect.interrupting is not None:
                self._local.cancel(effect.interrupting)
            assert guard.wakeup is not None
            with anyio.move_on_after(self._settings.lease_poll_seconds):
                await guard.wakeup.wait()
            guard.wakeup = self._local.released(effect.session_id)
            answer = await store.apply_lease_event(
                effect.session_id, leases.Poll(effect.run_id, self._clock(), self._ttl)
            )
            return self._track(guard, answer)
        if isinstance(effect, fx.RunTarget):
            ran = await self._run_target(effect, guard, on_update)
            guard.ran = (effect, ran)
            return ran
        if isinstance(effect, fx.AppendAssistantMessage):
            return await self._target.append_assistant_message(effect.state, effect.text)
        if isinstance(effect, fx.FinishRun):
            with tracing.span("agenthost.save", enabled=guard.traced) as spanned:
                if finisher is not None:
                    if guard.ran is not None:
                        writes = await finisher.writes_for(*guard.ran)
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
            guard.holding = False
            self._local.notify_released(effect.session_id)
            return saved
        if isinstance(effect, fx.BeginLink):
            return tuple([await linker.begin(effect.identity) for linker in self._linkers])
        if isinstance(effect, fx.CompleteLink):
            for linker in self._linkers:
                if linker.completes_by_command:
                    return await linker.complete(
                        effect.challenge_id, effect.proof, identity=effect.identity
                    )
            return None
        if isinstance(effect, fx.UnlinkIdentity):
            result = await store.unlink_identity(effect.identity, effect.new_key, effect.now)
            log.info(
                "unlink", extra={"channel": effect.identity.channel, "reason": result.reason.value}
            )
            return result
        if isinstance(effect, fx.RotateSession):
            return await store.rotate_session(effect.scope, effect.new_session_id, effect.now)
        raise TypeError(f"no interpreter for effect {type(effect).__name__}")

    async def _open_turn(self, effect: fx.OpenTurn, guard: _LeaseGuard) -> opening.Outcome:
        releases_before = self._local.releases
        plan = effect.opening
        with tracing.span(
            "agenthost.resolve_session", enabled=guard.traced, channel=plan.identity.channel
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
            guard.session_id, guard.run_id = session_id, effect.opening.run_id
            self._track(guard, fx.LeaseAnswer(outcome.lease, outcome.session))
            if guard.waiting:
                # The session id was not known before the trip, so a release that landed
                # during it could not be watched for: if any did, look again at once.
                guard.wakeup = self._local.released(session_id)
                if self._local.releases != releases_before:
                    guard.wakeup = _already_set()
        return outcome

    @property
    def _ttl(self) -> float:
        return self._settings.lease_seconds

    @staticmethod
    def _track(guard: _LeaseGuard, answer: fx.LeaseAnswer) -> fx.LeaseAnswer:
        guard.holding = isinstance(answer.decision, leases.Granted)
        guard.waiting = isinstance(answer.decision, leases.Waiting)
        return answer

    async def _run_target(
        self, effect: fx.RunTarget, guard: _LeaseGuard, on_update: UpdateSink | None
    ) -> fx.TargetSucceeded | fx.TargetFailed:
        call = TargetCall(effect.request, effect.session_ref, effect.session_state, on_update)
        answer: fx.TargetSucceeded | fx.TargetFailed
        held = guard.session_id if guard.holding else None
        with (
            anyio.CancelScope() as run_scope,
            tracing.span("agenthost.run", enabled=guard.traced) as spanned,
        ):
            self._local.register(effect.run_id, run_scope, held)  # renew_leases keeps it
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
                self._local.unregister(effect.run_id)
            spanned.set_attribute(
                "agenthost.outcome",
                "succeeded" if isinstance(answer, fx.TargetSucceeded) else "failed",
            )
        if run_scope.cancelled_caught:
            return fx.TargetFailed("the run was interrupted", cancelled=True)
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

    async def _abandon_lease(self, guard: _LeaseGuard) -> None:
        assert guard.session_id is not None and guard.run_id is not None
        if guard.holding:
            await self._store.finish_run(guard.session_id, guard.run_id, None, self._clock())
            self._local.notify_released(guard.session_id)
        else:
            await self._store.apply_lease_event(
                guard.session_id, leases.Withdraw(guard.run_id, self._clock())
            )
        guard.holding = guard.waiting = False


def _already_set() -> anyio.Event:
    event = anyio.Event()
    event.set()
    return event


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
