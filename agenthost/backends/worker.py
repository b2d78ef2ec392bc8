"""The background-run worker: runs recorded runs, renews their leases, recovers the lost.

Runs reach it two ways: a fresh submission from this process (a bounded queue; when it is
full the run simply waits in the store) and a periodic sweep of the store, which also
recovers runs abandoned by a dead process and deletes expired ones. A run's completion (its
result, and the deliveries of a reply routed by ``destinations.DeliveryRouter``) is recorded
in the transaction that saves its session, so a process killed at any point either applied
the whole turn or none of it: recovery never re-runs a turn whose session was saved.
Concurrency is capped; the cap is taken before a task is spawned, so a sweep that finds ten
thousand queued runs never spawns ten thousand tasks. On shutdown it drains for a grace
period, then cancels what is left and suspends it back to ``queued`` for the next process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import attrs

from agenthost.backends import tracing
from agenthost.backends.channel import Channel
from agenthost.backends.destinations import DeliveryRouter
from agenthost.backends.interpreter import TurnInterpreter
from agenthost.backends.logs import token_reference
from agenthost.backends.targets import json_safe
from agenthost.sansio_core import background, turns
from agenthost.sansio_core.delivery import Delivery
from agenthost.sansio_core.effects import RunTarget, TargetFailed, TargetSucceeded
from agenthost.sansio_core.types import ChannelRequest, RunStatus, SessionRef
from agenthost.stores.base import FinishedTurn, RunNotFound, Store, TurnWrites

log = logging.getLogger("agenthost.background")


@attrs.frozen
class WorkerSettings:
    max_concurrent_runs: int = 16
    queue_size: int = 1024
    lease_seconds: float = 30.0
    sweep_seconds: float = 10.0
    result_ttl_seconds: float = 24 * 3600.0


class BackgroundWorker:
    def __init__(
        self,
        *,
        store: Store,
        interpreter: TurnInterpreter,
        clock: Callable[[], float],
        owner: str,
        settings: WorkerSettings,
        turn_settings: turns.TurnSettings,
        channels: Mapping[str, Channel],
        router: DeliveryRouter | None = None,
        on_scheduled: Callable[[], None] | None = None,
    ) -> None:
        self._channels = channels
        self._router = router
        self._on_scheduled = on_scheduled
        self._store = store
        self._interpreter = interpreter
        self._clock = clock
        self._owner = owner
        self._settings = settings
        self._turn_settings = turn_settings
        self._send, self._receive = anyio.create_memory_object_stream[str](settings.queue_size)
        self._limiter = anyio.CapacityLimiter(settings.max_concurrent_runs)
        self._inflight: dict[str, anyio.CancelScope] = {}
        self._idle: anyio.Event | None = None  # set when the last in-flight run ends
        self._task_group: anyio.abc.TaskGroup | None = None

    # --- called by the host -------------------------------------------------------

    def submit(self, token: str) -> None:
        """Offer a freshly recorded run; if the queue is full the sweep will find it."""
        with contextlib.suppress(
            anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
        ):
            self._send.send_nowait(token)

    def cancel_local(self, token: str) -> None:
        scope = self._inflight.get(token)
        if scope is not None:
            scope.cancel()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            sweeping = anyio.CancelScope()
            tg.start_soon(self._sweep_forever, sweeping)
            task_status.started()
            async with self._receive:
                async for token in self._receive:
                    if token in self._inflight:
                        continue
                    await self._limiter.acquire_on_behalf_of(token)
                    self._inflight[token] = anyio.CancelScope()
                    tg.start_soon(self._execute, token)
            # The queue closed for shutdown: stop sweeping; runs in flight are left to drain().
            sweeping.cancel()

    async def drain(self, grace_seconds: float) -> None:
        """Stop taking runs, give running ones ``grace_seconds``, then cancel the rest."""
        self._send.close()
        if self._inflight:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace_seconds):
                await self._idle.wait()
        for scope in list(self._inflight.values()):
            scope.cancel()

    # --- internals ----------------------------------------------------------------

    async def _sweep_forever(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self._sweep_periodically()

    async def _sweep_periodically(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("background sweep failed; retrying at the next interval")
            await anyio.sleep(self._settings.sweep_seconds)

    async def sweep(self) -> None:
        now = self._clock()
        ttl = self._settings.result_ttl_seconds
        for record in await self._store.list_runs([RunStatus.RUNNING, RunStatus.QUEUED]):
            if record.token in self._inflight:
                continue
            if record.is_abandoned(now):
                record = await self._store.apply_run_event(
                    record.token, background.Recover(now, ttl)
                )
                log.warning(
                    "recovered an abandoned background run",
                    extra={"token": record.token, "status": record.status.value},
                )
            if record.status is RunStatus.QUEUED:
                self.submit(record.token)
        expired = await self._store.delete_expired_runs(now)
        expired_records = await self._store.delete_expired_channel_records(now)
        expired_links = await self._store.delete_expired_link_records(now)
        expired_leases = await self._store.delete_expired_singletons(now)
        if expired or expired_records or expired_links or expired_leases:
            log.info(
                "deleted expired records",
                extra={
                    "runs": expired,
                    "channel_records": expired_records,
                    "link_records": expired_links,
                    "singleton_leases": expired_leases,
                },
            )

    async def _execute(self, token: str) -> None:
        scope = self._inflight[token]
        try:
            with scope:
                await self._run(token, scope)
        finally:
            self._inflight.pop(token, None)
            self._limiter.release_on_behalf_of(token)
            if not self._inflight and self._idle is not None:
                self._idle.set()

    async def _run(self, token: str, scope: anyio.CancelScope) -> None:
        lease = self._settings.lease_seconds
        try:
            record = await self._store.apply_run_event(
                token, background.Start(self._owner, self._clock(), lease)
            )
        except (background.RunTransitionRefused, RunNotFound):
            return  # another worker took it, or it was cancelled meanwhile
        log.info("background run started", extra={"token": token, "attempt": record.attempts})
        final_request = [record.request]  # the run hook may rewrite it, target included
        finisher = _RunFinisher(self, record, final_request)
        try:
            async with anyio.create_task_group() as heartbeats:
                heartbeats.start_soon(self._heartbeat, token, scope)
                channel = self._channels.get(record.request.channel)
                spanned = tracing.span(
                    "agenthost.background_run",
                    channel=record.request.channel,
                    token_ref=token_reference(token),
                    attempt=record.attempts,
                )
                with spanned:
                    outcome = await self._interpreter.drive(
                        turns.start_background_turn(
                            record.request,
                            SessionRef(record.isolation_key, record.session_id, record.session_key),
                            run_id=token,
                            now=self._clock(),
                            settings=self._turn_settings,
                        ),
                        on_update=channel.background_updates(record) if channel else None,
                        on_request=final_request.append,
                        finisher=finisher,
                    )
                heartbeats.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._suspend_if_still_mine(token)
            raise
        if finisher.finished_turn is not None:
            # Completed by the commit that saved the session: nothing left to record.
            finished = finisher.finished_turn
            await self._after_recording(
                token, finished.run, finished.run_refused, finisher.deliveries
            )
        else:
            await self._record_outcome(record, final_request[-1], outcome)

    async def completion(
        self,
        record: background.RunRecord,
        request: ChannelRequest,
        answer: TargetSucceeded | TargetFailed | turns.TurnRefused,
    ) -> tuple[background.RunEvent, tuple[Delivery, ...]]:
        """The run's final event and the deliveries of its reply (routed when the request's
        target is not ``originating``)."""
        now, ttl = self._clock(), self._settings.result_ttl_seconds
        if isinstance(answer, TargetFailed):
            return background.Fail(self._owner, now, answer.error, ttl), ()
        if isinstance(answer, turns.TurnRefused):
            return background.Fail(self._owner, now, answer.detail, ttl), ()
        result: dict[str, Any] = {"text": answer.text, "output": _storable(answer.result)}
        deliveries: tuple[Delivery, ...] = ()
        target = request.response_target
        if not target.is_originating and self._router is not None:
            plan = await self._router.plan_reply(
                key_prefix=record.token,
                request=request,
                target=target,
                isolation_key=record.isolation_key,
                reply_text=answer.text,
                now=now,
            )
            deliveries = plan.deliveries
            result["destinations"] = plan.intended  # intent only: the outbox has the rest
        return background.Complete(self._owner, now, result, ttl), deliveries

    async def _record_outcome(
        self, record: background.RunRecord, request: ChannelRequest, outcome: Any
    ) -> None:
        """Record a run that finished without saving a session (stateless, or refused)."""
        token = record.token
        answer: TargetSucceeded | TargetFailed | turns.TurnRefused
        if isinstance(outcome, turns.TurnCompleted):
            answer = TargetSucceeded(outcome.result.result, outcome.result.text, None)
        elif isinstance(outcome, turns.TurnFailed):
            answer = TargetFailed(outcome.error, outcome.cancelled)
        else:
            answer = outcome
        event, deliveries = await self.completion(record, request, answer)
        try:
            if deliveries:
                recorded = await self._store.complete_run_with_deliveries(token, event, deliveries)
            else:
                recorded = await self._store.apply_run_event(token, event)
        except background.RunTransitionRefused as refused:
            await self._after_recording(token, None, refused.reason, deliveries)
            return
        await self._after_recording(token, recorded, None, deliveries)

    async def _after_recording(
        self,
        token: str,
        recorded: background.RunRecord | None,
        refused: str | None,
        deliveries: tuple[Delivery, ...],
    ) -> None:
        if recorded is None:
            log.info(
                "background run result not recorded",
                extra={"token": token, "reason": refused or "unknown"},
            )
            return
        log.info(
            "background run finished",
            extra={
                "token": token,
                "status": recorded.status.value,
                "deliveries": len(deliveries),
            },
        )
        if deliveries and self._on_scheduled is not None:
            self._on_scheduled()
        await self.announce_finished(recorded)

    async def announce_finished(self, record: background.RunRecord) -> None:
        """Tell the originating channel; its failure is logged, never lost in the worker."""
        channel = self._channels.get(record.request.channel)
        if channel is None:
            return
        try:
            await channel.background_finished(record)
        except Exception:
            log.exception(
                "channel failed to handle a finished background run",
                extra={"token": record.token, "channel": channel.name},
            )

    async def _suspend_if_still_mine(self, token: str) -> None:
        try:
            await self._store.apply_run_event(token, background.Suspend(self._owner, self._clock()))
        except (background.RunTransitionRefused, RunNotFound):
            return  # cancelled by request, or already taken over: nothing to hand back

    async def _heartbeat(self, token: str, scope: anyio.CancelScope) -> None:
        lease = self._settings.lease_seconds
        while True:
            await anyio.sleep(lease / 3)
            try:
                await self._store.apply_run_event(
                    token, background.Heartbeat(self._owner, self._clock(), lease)
                )
            except (background.RunTransitionRefused, RunNotFound):
                # Cancelled by request, or recovered by another replica: stop working on it.
                scope.cancel()
                return


@attrs.define
class _RunFinisher:
    """Completes the background run in the transaction that saves its session
    (``interpreter.TurnFinisher``), so a crash cannot save the turn without completing it."""

    worker: BackgroundWorker
    record: background.RunRecord
    requests: list[ChannelRequest]  # as the run hook rewrote it, last
    deliveries: tuple[Delivery, ...] = ()
    finished_turn: FinishedTurn | None = None

    async def writes_for(
        self, ran: RunTarget | None, answer: TargetSucceeded | TargetFailed | None
    ) -> TurnWrites:
        if answer is None:  # pragma: no cover - a background turn always runs its target
            return TurnWrites()
        event, self.deliveries = await self.worker.completion(
            self.record, self.requests[-1], answer
        )
        return TurnWrites(run_event=(self.record.token, event), deliveries=self.deliveries)

    def finished(self, result: FinishedTurn) -> None:
        self.finished_turn = result


def _storable(result: Any) -> Any:
    try:
        return json_safe(result)
    except (TypeError, ValueError):
        return None
