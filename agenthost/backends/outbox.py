"""The delivery worker: sends what the outbox holds, one task per conversation in flight.

It claims due deliveries in batches (``store.claim_due_deliveries``, a lease each), and
runs the claimed sends side by side under the host's fan-out limit, so one slow or
failing destination never holds up another; only the deliveries to one conversation go
one at a time, in the order they were scheduled. A delivery with an echo sends the
echo first (silently where the platform allows) and records ``EchoSent`` before the
reply, so a retry never echoes twice; a reply sent in parts records ``PartSent`` after
each. One renewal loop renews the lease of every send in flight every third of the lease,
in one store call, so a slow send is never taken over by another worker; a send whose
renewal is refused (the delivery is no longer ours) stops. Each push's outcome becomes
``Sent`` or ``SendFailed`` (with jitter from the system's CSPRNG); a cancel or shutdown
records ``Interrupted`` (shielded) saying whether a request was in flight, which the core
turns into ``scheduled`` (nothing went out, or the push is idempotent) or ``unknown``. A
periodic sweep applies ``Recover`` to sends whose lease expired (their process died), and
the worker sleeps until the next delivery is due, a sweep, or a wake-up from a freshly
scheduled delivery. It asks the store for due work only when some may be due: at start,
after ``notify`` (deliveries scheduled or replayed), when a retry or the next scheduled
delivery falls due, at each sweep, and while claims keep coming back full; a finished
send wakes it to use the freed slot only then, not to ask again.

Every step a send records goes through one :class:`StepRecorder`: the steps of sends that
finish together are written in one transaction (``store.apply_delivery_events``), and each
send goes on only once its own step is committed, so ``delivered`` still means the push
succeeded and its ``Sent`` is durable.

Every decision is ``sansio_core.delivery``'s; this module only performs it.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from agenthost.backends import tracing
from agenthost.backends.destinations import DeliveryRouter
from agenthost.backends.push import ChannelPush, PushMessage, PushOutcome
from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, FailureKind
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.base import DeliveryStepAnswer, Store

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
        self._inflight: dict[str, _InFlight] = {}
        # Per conversation with a send under way: the claimed sends waiting their turn.
        self._following: dict[delivery.Conversation, deque[tuple[Delivery, _InFlight]]] = {}
        self._idle: anyio.Event | None = None
        self._stopping = False
        self._claiming: anyio.CancelScope | None = None
        self._renewing = anyio.CancelScope()
        # When the store may next have due work: claims are asked for only then (or after
        # notify), not each time a send finishes; ``None`` means nothing is scheduled.
        self._due_at: float | None = -math.inf
        self._announced = 0  # notify() calls, so a stale read of the next due time is kept out
        # A write waits a moment for the steps of sends still in flight (see StepRecorder).
        self._steps = StepRecorder(store, expected=lambda: len(self._inflight))

    # --- called by the host -------------------------------------------------------

    def notify(self) -> None:
        """Deliveries were scheduled (here, or by a process whose notifications reach this
        one), or replayed: look for due work now."""
        self._announced += 1
        self._due_by(-math.inf)
        self._wake.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as sends:
            sends.start_soon(self._renew_leases, name="delivery lease renewals")
            with anyio.CancelScope() as claiming:
                self._claiming = claiming
                task_status.started()
                await self._claim_forever(sends)
            # Shutdown: claiming stopped; sends in flight are left to drain(), their leases
            # renewed until the last one ends.

    async def drain(self, grace_seconds: float) -> None:
        """Stop claiming, give sends in flight ``grace_seconds``, then interrupt the rest."""
        self._stopping = True
        if self._claiming is not None:
            self._claiming.cancel()
        if self._inflight:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace_seconds):
                await self._idle.wait()
        else:
            self._renewing.cancel()
        for sending in list(self._inflight.values()):
            sending.interrupt.cancel()

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
                # Recovered sends may be due, and so may work nobody announced (scheduled
                # by a process whose notifications do not reach this one).
                self._due_by(-math.inf)
            self._wake = anyio.Event()
            free = int(self._limiter.available_tokens)
            if free > 0 and self._due_at is not None and self._due_at <= now:
                asked = min(free, self._settings.batch_size)
                if await self._claim_some(sends, asked) == asked:
                    continue  # there may be more due right away
                # The store has nothing more due now: ask when it will, once, rather than
                # claiming again each time a send finishes.
                await self._learn_next_due()
            wait = next_sweep - self._clock()
            if self._due_at is not None and self._limiter.available_tokens > 0:
                wait = min(wait, self._due_at - self._clock())
            # With every slot busy, a finishing send wakes the loop. The floor keeps a
            # delivery due "now" that another worker just claimed from becoming a spin.
            with anyio.move_on_after(max(wait, _MIN_WAIT_SECONDS)):
                await self._wake.wait()

    def _due_by(self, moment: float) -> None:
        """Something may be due at ``moment``: claim then, if not sooner."""
        if self._due_at is None or moment < self._due_at:
            self._due_at = moment

    async def _learn_next_due(self) -> None:
        announced = self._announced
        try:
            due = await self._store.next_delivery_due()
        except Exception:
            log.exception("reading the next delivery time failed")
            due = None  # the next sweep looks again
        if self._announced == announced:  # else the read may predate what was scheduled
            self._due_at = due

    async def _claim_some(self, sends: anyio.abc.TaskGroup, limit: int) -> int:
        # Shielded: a claim committed by the store must not be lost to a shutdown's cancel
        # (the deliveries would sit ``sending`` until their lease ran out). Claimed while
        # stopping, they are handed straight back without spending an attempt.
        with anyio.CancelScope(shield=True):
            try:
                claimed = await self._store.claim_due_deliveries(
                    self._owner, self._clock(), self._settings.lease_seconds, limit
                )
            except Exception:
                log.exception("claiming deliveries failed")
                return 0
            if self._stopping:
                interrupted = delivery.Interrupted(self._owner, self._clock())
                await self._steps.record_all([(d.delivery_id, interrupted) for d in claimed])
                return 0
        for d in sorted(claimed, key=delivery.scheduling_order):
            sending = _InFlight()
            self._inflight[d.delivery_id] = sending
            await self._limiter.acquire_on_behalf_of(d.delivery_id)
            conversation = delivery.conversation_of(d)
            following = self._following.get(conversation)
            if following is not None:  # a send to this conversation is under way
                following.append((d, sending))
                continue
            self._following[conversation] = deque()
            sends.start_soon(
                self._deliver_in_order, conversation, d, sending, name=f"delivery {d.delivery_id}"
            )
        return len(claimed)

    async def sweep(self) -> None:
        """Recover sends whose lease expired (their sender died mid-send), and forget
        deliveries delivered longer ago than ``keep_delivered_seconds``."""
        now = self._clock()
        await self._store.purge_deliveries(
            [DeliveryStatus.DELIVERED], updated_before=now - self._settings.keep_delivered_seconds
        )
        recoveries: list[Step] = []
        for d in await self._store.list_deliveries([DeliveryStatus.SENDING], limit=1000):
            if d.delivery_id in self._inflight or not d.is_abandoned(now):
                continue
            pusher = self._router.pusher(d.channel)
            idempotent = bool(pusher is not None and pusher.push_is_idempotent)
            recoveries.append((d.delivery_id, delivery.Recover(now, idempotent_push=idempotent)))
        if not recoveries:
            return
        # One transaction for all; a delivery another worker recovered or renewed meanwhile
        # is answered with a refusal (or left as it is by the core) and skipped.
        answers = await self._store.apply_delivery_events(recoveries)
        for (delivery_id, _), recovered in zip(recoveries, answers, strict=True):
            if isinstance(recovered, Delivery) and recovered.status is not DeliveryStatus.SENDING:
                log.warning(
                    "recovered an abandoned delivery",
                    extra={"delivery_id": delivery_id, "status": recovered.status.value},
                )

    # --- one delivery ---------------------------------------------------------------

    async def _deliver_in_order(
        self, conversation: delivery.Conversation, d: Delivery, sending: _InFlight
    ) -> None:
        """Send ``d``, then the deliveries to the same conversation claimed meanwhile, one
        at a time: a conversation's messages reach it in the order they were scheduled
        (an A2A receiver sees a task's end after its start, a chat its replies in turn)."""
        following = self._following[conversation]
        try:
            while True:
                await self._deliver(d, sending)
                if not following:
                    return
                d, sending = following.popleft()
        finally:
            del self._following[conversation]
            if following:
                # Cancelled from outside (a shutdown) with sends still waiting their turn:
                # nothing of them went out, so they are handed back as due, not left to
                # a sweep that would have to call a non-idempotent one ``unknown``.
                with anyio.CancelScope(shield=True):
                    interrupted = delivery.Interrupted(self._owner, self._clock())
                    try:
                        await self._steps.record_all(
                            [(w.delivery_id, interrupted) for w, _ in following]
                        )
                    except Exception:
                        log.exception("handing back deliveries waiting their turn failed")
                for waiting, waiting_sending in following:
                    self._settled(waiting.delivery_id, waiting_sending)

    async def _deliver(self, d: Delivery, sending: _InFlight) -> None:
        progress = _Progress()
        try:
            if sending.lease_lost.cancel_called:
                # Taken by another worker while waiting its turn (this process was frozen
                # past the lease): it is not ours to send, nor to record anything on.
                return
            if sending.interrupt.cancel_called:
                # Interrupted while waiting its turn behind a send to its conversation:
                # nothing of it went out, whatever the channel (not ``unknown``).
                with anyio.CancelScope(shield=True):
                    await self._record(
                        d.delivery_id, delivery.Interrupted(self._owner, self._clock())
                    )
                return
            with sending.interrupt:
                try:
                    # Cancelled by the renewal loop when the delivery is no longer ours: the
                    # send stops quietly, its next step could only be refused.
                    with sending.lease_lost:
                        await self._send(d, sending, progress)
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
            self._settled(d.delivery_id, sending)

    def _settled(self, delivery_id: str, sending: _InFlight) -> None:
        """A send ended: no longer in flight, its slot free; the last one of a shutdown
        lets the drain go on."""
        self._inflight.pop(delivery_id, None)
        self._free_slot(delivery_id, sending)
        self._wake.set()
        if not self._inflight and self._stopping:
            self._renewing.cancel()
            if self._idle is not None:
                self._idle.set()

    def _free_slot(self, delivery_id: str, sending: _InFlight) -> None:
        """Give back the send's place under the fan-out limit, once.

        Called as soon as the send has nothing more to push (its last push answered), not
        only when it ends: what is left is recording the outcome, which the StepRecorder
        may hold a moment to commit with other sends' steps, and that must not keep the
        next delivery from starting its push. The send stays in flight (its lease renewed,
        a shutdown waiting for it) until its step is committed.
        """
        if not sending.slot_freed:
            sending.slot_freed = True
            self._limiter.release_on_behalf_of(delivery_id)
            self._wake.set()

    async def _renew_leases(self) -> None:
        """Every third of the lease, renew the lease of every send in flight, in one store
        call; stop the sends whose delivery is no longer ours (a sweep took it for dead).

        One loop for the worker rather than one task per send: a send costs no task of its
        own, and a fan-out's renewals share one transaction. A send claimed just after a
        round is renewed at the next, within a third of the lease, as before.
        """
        lease = self._settings.lease_seconds
        with self._renewing:
            while True:
                await anyio.sleep(lease / 3)
                held = list(self._inflight.items())
                if not held:
                    continue
                renew = delivery.Renew(self._owner, self._clock(), lease)
                try:
                    answers = await self._steps.record_all([(i, renew) for i, _ in held])
                except Exception:
                    # The next round tries again, well within the lease.
                    log.exception("renewing delivery leases failed")
                    continue
                for (delivery_id, sending), answer in zip(held, answers, strict=True):
                    if answer is None:
                        log.info("delivery lease lost", extra={"delivery_id": delivery_id})
                        sending.lease_lost.cancel()

    async def _send(self, d: Delivery, sending: _InFlight, progress: _Progress) -> None:
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
                self._free_slot(d.delivery_id, sending)
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
        self._free_slot(d.delivery_id, sending)
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
            if after.status is DeliveryStatus.FAILED:
                self._due_by(after.next_attempt_at)  # the retry
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
        [recorded] = await self._steps.record_all([(delivery_id, event)])
        return recorded


@attrs.define
class _Progress:
    """Whether a push is under way (a shutdown then cannot know what the platform got)."""

    in_flight: bool = False


@attrs.define
class _InFlight:
    """A send under way: ``interrupt`` is cancelled by a shutdown (``Interrupted`` is
    recorded), ``lease_lost`` by the renewal loop (the send just stops); ``slot_freed``
    once its place under the fan-out limit is given back."""

    interrupt: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    lease_lost: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    slot_freed: bool = False


Step = tuple[str, delivery.DeliveryEvent]


class StepRecorder:
    """Delivery steps from many sends, committed together.

    A caller queues its steps; whoever finds no write under way becomes the writer: it lets
    the event loop turn (the sends whose answers arrived in the same tick queue theirs
    too), keeps turning while more arrive (at most :attr:`GATHER_TURNS` times), then, while
    fewer steps are queued than ``expected()`` (the sends in flight, each of which will
    have one), waits for more for at most :attr:`GATHER_SECONDS`; then it writes everything
    queued in one ``store.apply_delivery_events`` call and answers every caller. Steps
    queued during a write go out in the next one. A caller is answered only after the
    commit that holds its step.

    Why wait: with the SQLite store a write runs inline, in no event-loop time, so a
    fan-out's sends, whose answers arrive a little apart, each committed alone (one
    transaction per ``Sent``: 99 calls for 100 deliveries, about 40 % of the store's work
    in a round). The wait holds up no push: a send gives back its place under the fan-out
    limit before recording its outcome. It only delays the commit (so ``delivered``) by
    at most :attr:`GATHER_SECONDS`; a lone send (nothing else in flight) never waits.

    The wait is shielded: an outcome the platform gave must not be lost to a shutdown's
    cancel, and a step taken into a write is answered whatever happens to its caller.
    """

    GATHER_TURNS = 4
    GATHER_SECONDS = 0.002

    def __init__(self, store: Store, *, expected: Callable[[], int] = lambda: 0) -> None:
        self._store = store
        self._expected = expected
        self._queue: list[_QueuedStep] = []
        self._writing = False
        self._written: anyio.Event | None = None
        self._arrived: anyio.Event | None = None  # set when steps are queued

    async def record_all(self, steps: list[Step]) -> list[Delivery | None]:
        """Each step's delivery as committed, or ``None`` when the step was refused or the
        delivery is gone (it is not ours any more; logged). A failed write raises."""
        queued = [_QueuedStep(delivery_id, event) for delivery_id, event in steps]
        if not queued:
            return []
        self._queue.extend(queued)
        if self._arrived is not None:
            self._arrived.set()
        with anyio.CancelScope(shield=True):
            while not queued[-1].done:
                if self._writing:
                    await self._next_write()
                else:
                    await self._write()
        return [step.result() for step in queued]

    async def _write(self) -> None:
        self._writing = True
        try:
            for _ in range(self.GATHER_TURNS):
                queued = len(self._queue)
                await anyio.lowlevel.checkpoint()
                if len(self._queue) == queued:
                    break
            if len(self._queue) < self._expected():
                with anyio.move_on_after(self.GATHER_SECONDS):
                    while len(self._queue) < self._expected():
                        self._arrived = anyio.Event()
                        await self._arrived.wait()
                self._arrived = None
            batch, self._queue = self._queue, []
            try:
                answers = await self._store.apply_delivery_events(
                    [(step.delivery_id, step.event) for step in batch]
                )
            except Exception as failure:
                for step in batch:
                    step.failure, step.done = failure, True
                return
            for step, answer in zip(batch, answers, strict=True):
                step.answer, step.done = answer, True
        finally:
            self._writing = False
            written, self._written = self._written, None
            if written is not None:
                written.set()

    async def _next_write(self) -> None:
        if self._written is None:
            self._written = anyio.Event()
        await self._written.wait()


@attrs.define
class _QueuedStep:
    delivery_id: str
    event: delivery.DeliveryEvent
    answer: DeliveryStepAnswer | None = None
    failure: Exception | None = None
    done: bool = False

    def result(self) -> Delivery | None:
        if self.failure is not None:
            raise self.failure
        if isinstance(self.answer, Delivery):
            return self.answer
        # Recovered by another worker meanwhile, or purged: it is not ours any more.
        log.info(
            "delivery step not recorded",
            extra={"delivery_id": self.delivery_id, "step": type(self.event).__name__,
                   "reason": str(self.answer)},
        )  # fmt: skip
        return None


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
