"""The delivery worker: sends what the outbox holds, one task per delivery.

It claims due deliveries in batches (``store.claim_due_deliveries``, a lease each), and
runs every claimed delivery's send in its own task under the host's fan-out limit, so one
slow or failing destination never holds up another. A delivery with an echo sends the
echo first (silently where the platform allows) and records ``EchoSent`` before the
reply, so a retry never echoes twice; a reply sent in parts records ``PartSent`` after
each. While a send runs its lease is renewed every third of the lease, so a slow send is
never taken over by another worker. Each push's outcome becomes ``Sent`` or
``SendFailed`` (with jitter from the system's CSPRNG); a cancel or shutdown records
``Interrupted`` (shielded) saying whether a request was in flight, which the core turns
into ``scheduled`` (nothing went out, or the push is idempotent) or ``unknown``. A
periodic sweep applies ``Recover`` to sends whose lease expired (their process died), and
the worker sleeps until the next delivery is due, a sweep, or a wake-up from a freshly
scheduled delivery.

Every decision is ``sansio_core.delivery``'s; this module only performs it.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import attrs

from agenthost.backends import tracing
from agenthost.backends.destinations import DeliveryRouter
from agenthost.backends.push import ChannelPush, PushMessage, PushOutcome
from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, FailureKind
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.base import DeliveryNotFound, Store

log = logging.getLogger("agenthost.delivery")

_entropy = random.SystemRandom()
_MIN_WAIT_SECONDS = 0.005


@attrs.frozen
class DeliveryContext:
    """What a ``response_hook`` knows about the destination it shapes the message for.

    ``originating``: the destination is the one the request came from (its wire answered
    with a continuation token, so the reply is pushed there too).
    """

    delivery_id: str
    channel: str
    identity: ChannelIdentity
    conversation_id: str | None
    is_echo: bool
    originating: bool = False


ResponseHook = Callable[..., "PushMessage | Awaitable[PushMessage | None] | None"]


@attrs.frozen
class OutboxSettings:
    max_concurrent_sends: int = 16
    lease_seconds: float = 60.0
    sweep_seconds: float = 5.0
    batch_size: int = 64
    keep_delivered_seconds: float = 24 * 3600.0  # dead letters stay until an operator acts


class DeliveryWorker:
    def __init__(
        self,
        *,
        store: Store,
        router: DeliveryRouter,
        clock: Callable[[], float],
        owner: str,
        settings: OutboxSettings,
        response_hook: ResponseHook | None = None,
    ) -> None:
        self._store = store
        self._router = router
        self._clock = clock
        self._owner = owner
        self._settings = settings
        self._response_hook = response_hook
        self._limiter = anyio.CapacityLimiter(settings.max_concurrent_sends)
        self._wake = anyio.Event()
        self._inflight: dict[str, anyio.CancelScope] = {}
        self._idle: anyio.Event | None = None
        self._stopping = False
        self._claiming: anyio.CancelScope | None = None

    # --- called by the host -------------------------------------------------------

    def notify(self) -> None:
        """Deliveries were scheduled (or a send finished): look for due work now."""
        self._wake.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as sends:
            with anyio.CancelScope() as claiming:
                self._claiming = claiming
                task_status.started()
                await self._claim_forever(sends)
            # Shutdown: claiming stopped; sends in flight are left to drain().

    async def drain(self, grace_seconds: float) -> None:
        """Stop claiming, give sends in flight ``grace_seconds``, then interrupt the rest."""
        self._stopping = True
        if self._claiming is not None:
            self._claiming.cancel()
        if self._inflight:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace_seconds):
                await self._idle.wait()
        for scope in list(self._inflight.values()):
            scope.cancel()

    # --- the claim loop -------------------------------------------------------------

    async def _claim_forever(self, sends: anyio.abc.TaskGroup) -> None:
        next_sweep = 0.0
        while not self._stopping:
            now = self._clock()
            if now >= next_sweep:
                try:
                    await self.sweep()
                except Exception:
                    log.exception("delivery sweep failed; retrying at the next interval")
                next_sweep = now + self._settings.sweep_seconds
            self._wake = anyio.Event()
            claimed = await self._claim_some(sends)
            if claimed:
                continue  # there may be more due right away
            wait = next_sweep - self._clock()
            if self._limiter.available_tokens > 0:
                try:
                    due = await self._store.next_delivery_due()
                except Exception:
                    log.exception("reading the next delivery time failed")
                    due = None
                if due is not None:
                    wait = min(wait, due - self._clock())
            # With every slot busy, a finishing send wakes the loop. The floor keeps a
            # delivery due "now" that another worker just claimed from becoming a spin.
            with anyio.move_on_after(max(wait, _MIN_WAIT_SECONDS)):
                await self._wake.wait()

    async def _claim_some(self, sends: anyio.abc.TaskGroup) -> bool:
        free = int(self._limiter.available_tokens)
        if free <= 0:
            return False
        # Shielded: a claim committed by the store must not be lost to a shutdown's cancel
        # (the deliveries would sit ``sending`` until their lease ran out). Claimed while
        # stopping, they are handed straight back without spending an attempt.
        with anyio.CancelScope(shield=True):
            try:
                claimed = await self._store.claim_due_deliveries(
                    self._owner,
                    self._clock(),
                    self._settings.lease_seconds,
                    min(free, self._settings.batch_size),
                )
            except Exception:
                log.exception("claiming deliveries failed")
                return False
            if self._stopping:
                for d in claimed:
                    interrupted = delivery.Interrupted(self._owner, self._clock())
                    await self._record(d.delivery_id, interrupted)
                return False
        for d in claimed:
            scope = anyio.CancelScope()
            self._inflight[d.delivery_id] = scope
            await self._limiter.acquire_on_behalf_of(d.delivery_id)
            sends.start_soon(self._deliver, d, scope, name=f"delivery {d.delivery_id}")
        return bool(claimed)

    async def sweep(self) -> None:
        """Recover sends whose lease expired (their sender died mid-send), and forget
        deliveries delivered longer ago than ``keep_delivered_seconds``."""
        now = self._clock()
        await self._store.purge_deliveries(
            [DeliveryStatus.DELIVERED], updated_before=now - self._settings.keep_delivered_seconds
        )
        for d in await self._store.list_deliveries([DeliveryStatus.SENDING], limit=1000):
            if d.delivery_id in self._inflight or not d.is_abandoned(now):
                continue
            pusher = self._router.pusher(d.channel)
            idempotent = bool(pusher is not None and pusher.push_is_idempotent)
            try:
                recovered = await self._store.apply_delivery_event(
                    d.delivery_id, delivery.Recover(now, idempotent_push=idempotent)
                )
            except (delivery.DeliveryTransitionRefused, DeliveryNotFound):
                continue
            log.warning(
                "recovered an abandoned delivery",
                extra={"delivery_id": d.delivery_id, "status": recovered.status.value},
            )

    # --- one delivery ---------------------------------------------------------------

    async def _deliver(self, d: Delivery, scope: anyio.CancelScope) -> None:
        progress = _Progress()
        try:
            with scope:
                try:
                    async with anyio.create_task_group() as sending:
                        sending.start_soon(self._keep_leased, d.delivery_id, sending.cancel_scope)
                        await self._send(d, progress)
                        sending.cancel_scope.cancel()
                except anyio.get_cancelled_exc_class():
                    pusher = self._router.pusher(d.channel)
                    with anyio.CancelScope(shield=True):
                        interrupted = delivery.Interrupted(
                            self._owner,
                            self._clock(),
                            in_flight=progress.in_flight,
                            idempotent_push=bool(pusher and pusher.push_is_idempotent),
                        )
                        await self._record(d.delivery_id, interrupted)
                    raise
        finally:
            self._inflight.pop(d.delivery_id, None)
            self._limiter.release_on_behalf_of(d.delivery_id)
            self._wake.set()
            if not self._inflight and self._idle is not None:
                self._idle.set()

    async def _keep_leased(self, delivery_id: str, send: anyio.CancelScope) -> None:
        """Renew the lease while the send runs; if the delivery is no longer ours (a sweep
        took it for dead), stop sending: its next step could only be refused."""
        lease = self._settings.lease_seconds
        while True:
            await anyio.sleep(lease / 3)
            renew = delivery.Renew(self._owner, self._clock(), lease)
            if await self._record(delivery_id, renew) is None:
                send.cancel()
                return

    async def _send(self, d: Delivery, progress: _Progress) -> None:
        pusher = self._router.pusher(d.channel)
        if pusher is None:
            await self._failed(d, PushOutcome.permanent(f"no channel {d.channel!r} can push"))
            return
        destination = Destination(d.channel, d.identity, d.conversation_id)
        if d.phase == "echo":
            assert d.echo is not None
            echo = PushMessage(
                delivery_id=f"{d.delivery_id}:echo",
                text=str(d.echo.get("text", "")),
                is_echo=True,
                silent=True,
                isolation_key=d.isolation_key,
            )
            outcome = await self._push(pusher, destination, d, echo, progress)
            if not outcome.delivered:
                await self._failed(d, outcome)
                return
            echoed = delivery.EchoSent(self._owner, self._clock())
            if await self._record(d.delivery_id, echoed) is None:
                return
        reply = PushMessage(
            delivery_id=d.delivery_id,
            text=str(d.reply.get("text", "")),
            isolation_key=d.isolation_key,
        )
        outcome = await self._push(pusher, destination, d, reply, progress)
        if not outcome.delivered:
            await self._failed(d, outcome)
            return
        done = await self._record(d.delivery_id, delivery.Sent(self._owner, self._clock()))
        if done is not None:
            log.info(
                "delivered",
                extra={"delivery_id": d.delivery_id, "channel": d.channel, "attempt": d.attempts},
            )

    async def _push(
        self,
        pusher: ChannelPush,
        destination: Destination,
        d: Delivery,
        message: PushMessage,
        progress: _Progress,
    ) -> PushOutcome:
        async def part_sent(count: int) -> None:
            await self._record(d.delivery_id, delivery.PartSent(self._owner, self._clock(), count))

        try:
            if self._response_hook is not None:
                context = DeliveryContext(
                    d.delivery_id,
                    d.channel,
                    d.identity,
                    d.conversation_id,
                    message.is_echo,
                    originating=bool(d.reply.get("originating", False)),
                )
                shaped = await _maybe_await(self._response_hook(message, context=context))
                if isinstance(shaped, PushMessage):
                    message = shaped
            if not message.is_echo:
                # the cursor is the worker's, whatever the hook built
                message = attrs.evolve(message, parts_sent=d.parts_sent, on_part_sent=part_sent)
            # From the first request on, an interrupt cannot know what the platform got (a
            # reply may be out before its ``Sent`` is recorded), so it stays true.
            progress.in_flight = True
            with tracing.span(
                "agenthost.deliver",
                delivery_id=d.delivery_id,
                channel=d.channel,
                phase="echo" if message.is_echo else "reply",
            ) as spanned:
                outcome = await pusher.push(destination, message)
                spanned.set_attribute("agenthost.delivered", outcome.delivered)
            return outcome
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            # The exception's text may quote the message: keep its type only.
            return PushOutcome.transient(f"push raised {type(exc).__name__}")

    async def _failed(self, d: Delivery, outcome: PushOutcome) -> None:
        event = delivery.SendFailed(
            self._owner,
            self._clock(),
            outcome.failure or FailureKind.TRANSIENT,
            outcome.reason or "not delivered",
            _entropy.random(),
            outcome.retry_after,
        )
        after = await self._record(d.delivery_id, event)
        if after is not None:
            log.warning(
                "delivery failed",
                extra={
                    "delivery_id": d.delivery_id,
                    "channel": d.channel,
                    "status": after.status.value,
                    "reason": after.last_error,
                    "attempt": after.attempts,
                },
            )

    async def _record(self, delivery_id: str, event: delivery.DeliveryEvent) -> Delivery | None:
        try:
            # Shielded: an outcome the platform gave must not be lost to a shutdown's cancel.
            with anyio.CancelScope(shield=True):
                recorded = await self._store.apply_delivery_event(delivery_id, event)
            return recorded
        except (delivery.DeliveryTransitionRefused, DeliveryNotFound) as refused:
            # Recovered by another worker meanwhile, or purged: it is not ours any more.
            log.info(
                "delivery step not recorded",
                extra={"delivery_id": delivery_id, "step": type(event).__name__,
                       "reason": str(refused)},
            )  # fmt: skip
            return None


@attrs.define
class _Progress:
    """Whether a push is under way (a shutdown then cannot know what the platform got)."""

    in_flight: bool = False


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
