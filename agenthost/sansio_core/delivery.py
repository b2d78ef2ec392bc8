"""The delivery lifecycle: one durable push of a reply (and its echo) to one destination.

Rules (everything that decides a delivery's status lives in this file):

1. A delivery is recorded ``scheduled`` in the same store transaction that completes its
   run, so a crash after the run cannot lose it. Its id is its idempotency key: recording
   the same id twice keeps the first.
2. A worker *claims* a due delivery (``scheduled``, or ``failed`` whose retry time has
   come): ``-> sending``, with an owner and a lease. The attempt is counted at the claim,
   before anything is sent.
3. With an echo, the echo is sent first; ``echo_sent`` moves the cursor, so a retry never
   echoes twice. Then the reply: ``sent -> delivered``.
4. A failed send is classified by the channel. Transient (network, 5xx, 429) -> ``failed``
   with the next attempt after capped exponential backoff with jitter (at least half the
   step, so no draw of the dice burns the attempts at once), and never sooner than the
   platform's ``retry_after``; permanent (blocked, bad chat) -> ``dead`` at once with the
   reason. A transient failure is ``dead`` too when the attempts run out, when the next
   try would fall past the policy's time budget (counted from the first failure of the
   streak), or when ``retry_after`` is longer than the policy accepts (an endless or
   absurd wait parks nothing).
5. A shutdown or cancel interrupts a send. If no request was in flight (or the push is
   idempotent) nothing reached the platform twice: ``-> scheduled``, the attempt given
   back. If a request to a non-idempotent channel was in flight, nobody knows whether the
   platform got it: ``-> unknown``, exactly as after a crash (rule 6).
6. A ``sending`` delivery whose lease expired was in flight when its process died: nobody
   knows whether the platform got it. It becomes ``unknown`` — kept apart from ``failed``
   and never resent blindly — unless its channel's push is idempotent (the platform drops
   a repeated idempotency key), in which case it is scheduled again while it has attempts
   left. The sender renews its lease while it sends (``Renew``), so a slow send is never
   taken for a dead one.
7. A reply the channel sends in several parts records each part as it goes
   (``PartSent``): a retry, a recovery or a replay resumes after the last recorded part,
   so no part is ever sent twice by the host.
8. An operator may replay ``dead`` or ``unknown`` deliveries (``-> scheduled``, attempts
   and the retry streak reset) or purge dead ones. ``delivered`` is final: nothing moves
   it, so a delivery is never both delivered and dead.
9. The deliveries to one conversation (:func:`conversation_of`: channel, identity,
   conversation id) that one worker holds are sent one at a time, in the order they were
   scheduled (:func:`scheduling_order`), so a chat sees its replies and an A2A receiver a
   task's states in turn; other conversations' go side by side. A retry, or two workers
   claiming one conversation's deliveries, can still reorder them.

Time, owners and jitter (a number in [0, 1) drawn by the backend) come in with the events.
The transitions are :data:`DELIVERY_TRANSITIONS`; ``apply`` refuses any other step.
"""

from __future__ import annotations

import email.utils
import enum
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.types import ChannelIdentity


class DeliveryStatus(enum.Enum):
    SCHEDULED = "scheduled"
    SENDING = "sending"
    DELIVERED = "delivered"
    UNKNOWN = "unknown"
    FAILED = "failed"
    DEAD = "dead"


class FailureKind(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"RetryPolicy.{attribute.name} must be greater than 0, not {value!r}")


@attrs.frozen
class RetryPolicy:
    """How long a transient failure is retried.

    The default rides out an outage (or a receiver's deploy) of about an hour: steps of
    ``base * 2**n`` capped at ``cap_seconds``, each jittered, until ``budget_seconds``
    after the first failure of the streak; ``max_attempts`` only guards against a policy
    that would retry in a tight loop. A ``retry_after`` longer than
    ``max_retry_after_seconds`` is not waited for: the delivery goes to the dead letters.
    """

    max_attempts: int = attrs.field(default=100, validator=_positive)
    base_seconds: float = attrs.field(default=1.0, validator=_positive)
    cap_seconds: float = attrs.field(default=300.0, validator=_positive)
    budget_seconds: float = attrs.field(default=3600.0, validator=_positive)
    max_retry_after_seconds: float = attrs.field(default=3600.0, validator=_positive)

    def delay(self, attempt: int, jitter: float) -> float:
        """Equal jitter: between half and all of ``min(cap, base * 2**(attempt-1))``,
        ``jitter`` (in [0, 1]) choosing where."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2.0 ** max(attempt - 1, 0))
        return ceiling * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


_DELAY_SECONDS = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header in seconds from ``now``: delta-seconds or an HTTP-date.

    ``None`` when absent or unreadable; a date in the past is ``0``. The cap is the
    delivery's own (``RetryPolicy.max_retry_after_seconds``), applied when it fails.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):  # digits (a fraction tolerated), never inf or nan
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT by definition
        return None
    return max(when.timestamp() - now, 0.0)


@attrs.frozen
class Delivery:
    """One push to one destination: the reply, and first the user's words when echoing."""

    delivery_id: str
    isolation_key: str
    channel: str
    identity: ChannelIdentity
    conversation_id: str | None
    reply: Mapping[str, Any]
    echo: Mapping[str, Any] | None
    created_at: float
    status: DeliveryStatus = DeliveryStatus.SCHEDULED
    echo_sent: bool = False
    parts_sent: int = 0  # parts of a multi-part reply already sent (rule 7)
    attempts: int = 0
    retry: RetryPolicy = attrs.field(factory=lambda: RetryPolicy())
    next_attempt_at: float = 0.0
    owner: str | None = None
    lease_expires_at: float | None = None
    updated_at: float = 0.0
    delivered_at: float | None = None
    last_error: str | None = None
    failing_since: float | None = None  # the first transient failure of the current streak

    def is_due(self, now: float) -> bool:
        return (
            self.status in (DeliveryStatus.SCHEDULED, DeliveryStatus.FAILED)
            and self.next_attempt_at <= now
        )

    def is_abandoned(self, now: float) -> bool:
        return (
            self.status is DeliveryStatus.SENDING
            and self.lease_expires_at is not None
            and self.lease_expires_at <= now
        )

    @property
    def phase(self) -> str:
        """What the next send is: ``echo`` or ``reply``."""
        return "echo" if self.echo is not None and not self.echo_sent else "reply"


def plan(
    destinations: Sequence[Destination],
    *,
    key_prefix: str,
    isolation_key: str,
    reply: Mapping[str, Any],
    echo: Mapping[str, Any] | None,
    now: float,
    retry: RetryPolicy | Mapping[str, RetryPolicy],
    originating: Destination | None = None,
    parts_sent: int = 0,
) -> tuple[Delivery, ...]:
    """One ``scheduled`` delivery per destination, its id ``{key_prefix}:{channel}:{native}``.

    ``echo`` goes to every destination but the originating one (the user wrote it there);
    the originating one's reply is marked ``"originating": True`` (its wire answered with a
    continuation token, so the reply is pushed there too).

    ``retry`` is one policy, or one per channel name (each destination's channel must be
    there). ``parts_sent``: the first parts of the reply already went out on another path
    (a foreground answer cut short), so the push resumes after them.

    The id is the idempotency key: planning the same run twice (a completion retried after
    a crash) yields the same ids, so the store keeps the first.
    """
    return tuple(
        Delivery(
            delivery_id=f"{key_prefix}:{d.channel}:{d.identity.native_id}",
            isolation_key=isolation_key,
            channel=d.channel,
            identity=d.identity,
            conversation_id=d.conversation_id,
            reply={**reply, "originating": True} if d == originating else reply,
            echo=None if d == originating else echo,
            created_at=now,
            retry=retry if isinstance(retry, RetryPolicy) else retry[d.channel],
            parts_sent=parts_sent,
            next_attempt_at=now,
            updated_at=now,
        )
        for d in destinations
    )


Conversation = tuple[str, ChannelIdentity, "str | None"]


def conversation_of(delivery: Delivery) -> Conversation:
    """What rule 9 keeps in order: the deliveries to one conversation at one identity."""
    return (delivery.channel, delivery.identity, delivery.conversation_id)


def scheduling_order(delivery: Delivery) -> tuple[float, str]:
    """Rule 9's order: when a delivery was scheduled, then its id (a channel that writes
    several at one instant, as A2A does a task's notifications, numbers them in it)."""
    return (delivery.created_at, delivery.delivery_id)


def echo_text(channel_display_name: str, user_text: str) -> str:
    """The user's own words, attributed, as other destinations show them."""
    return f"You, via {channel_display_name}: {user_text}"


# --- events -------------------------------------------------------------------------


@attrs.frozen
class Claim:
    owner: str
    now: float
    lease_seconds: float


@attrs.frozen
class EchoSent:
    owner: str
    now: float


@attrs.frozen
class PartSent:
    """The first ``parts_sent`` parts of the reply are out (rule 7)."""

    owner: str
    now: float
    parts_sent: int


@attrs.frozen
class Renew:
    """The sender is still sending: its lease runs ``lease_seconds`` from ``now``."""

    owner: str
    now: float
    lease_seconds: float


@attrs.frozen
class Sent:
    owner: str
    now: float


@attrs.frozen
class SendFailed:
    owner: str
    now: float
    kind: FailureKind
    reason: str
    jitter: float
    retry_after: float | None = None


@attrs.frozen
class Interrupted:
    """A shutdown or cancel stopped the send (rule 5).

    ``in_flight``: a request to the platform had started and not been answered.
    """

    owner: str
    now: float
    in_flight: bool = False
    idempotent_push: bool = False


@attrs.frozen
class Recover:
    """A sweep found the delivery; it acts only if its sender died mid-send."""

    now: float
    idempotent_push: bool


@attrs.frozen
class Replay:
    now: float


DeliveryEvent = (
    Claim | EchoSent | PartSent | Renew | Sent | SendFailed | Interrupted | Recover | Replay
)

S, G, D, U, F, X = (
    DeliveryStatus.SCHEDULED,
    DeliveryStatus.SENDING,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.UNKNOWN,
    DeliveryStatus.FAILED,
    DeliveryStatus.DEAD,
)

# (status before, event) -> statuses the step may lead to.
DELIVERY_TRANSITIONS: dict[
    tuple[DeliveryStatus, type[DeliveryEvent]], frozenset[DeliveryStatus]
] = {
    (S, Claim): frozenset({G}),
    (F, Claim): frozenset({G}),
    (G, EchoSent): frozenset({G}),
    (G, PartSent): frozenset({G}),
    (G, Renew): frozenset({G}),
    (G, Sent): frozenset({D}),
    (G, SendFailed): frozenset({F, X}),
    (G, Interrupted): frozenset({S, U}),
    (G, Recover): frozenset({G, U, S}),  # still leased / sender died / idempotent push
    (S, Recover): frozenset({S}),
    (F, Recover): frozenset({F}),
    (X, Replay): frozenset({S}),
    (U, Replay): frozenset({S}),
}


class DeliveryTransitionRefused(Exception):
    def __init__(self, delivery: Delivery, event: DeliveryEvent, reason: str) -> None:
        super().__init__(
            f"{type(event).__name__} refused on {delivery.status.value} delivery: {reason}"
        )
        self.delivery = delivery
        self.reason = reason


def apply(delivery: Delivery, event: DeliveryEvent) -> Delivery:
    allowed = DELIVERY_TRANSITIONS.get((delivery.status, type(event)))
    if allowed is None:
        raise DeliveryTransitionRefused(delivery, event, "no such transition")
    new = _step(delivery, event)
    if new.status not in allowed:  # pragma: no cover - guards this module's own logic
        raise AssertionError(f"{delivery.status} --{type(event).__name__}--> {new.status}")
    return new


def _check(delivery: Delivery, event: DeliveryEvent, owner: str) -> None:
    if delivery.owner != owner:
        raise DeliveryTransitionRefused(delivery, event, "another worker holds it")


def _step(d: Delivery, event: DeliveryEvent) -> Delivery:
    if isinstance(event, Claim):
        if not d.is_due(event.now):
            raise DeliveryTransitionRefused(d, event, "not due yet")
        return attrs.evolve(
            d,
            status=DeliveryStatus.SENDING,
            attempts=d.attempts + 1,
            owner=event.owner,
            lease_expires_at=event.now + event.lease_seconds,
            updated_at=event.now,
        )
    if isinstance(event, EchoSent):
        _check(d, event, event.owner)
        if d.echo is None or d.echo_sent:
            raise DeliveryTransitionRefused(d, event, "no echo is pending")
        return attrs.evolve(d, echo_sent=True, updated_at=event.now)
    if isinstance(event, PartSent):
        _check(d, event, event.owner)
        if d.phase == "echo":
            raise DeliveryTransitionRefused(d, event, "the echo has not been sent")
        if event.parts_sent < d.parts_sent:
            raise DeliveryTransitionRefused(d, event, "parts already recorded as sent")
        return attrs.evolve(d, parts_sent=event.parts_sent, updated_at=event.now)
    if isinstance(event, Renew):
        _check(d, event, event.owner)
        return attrs.evolve(d, lease_expires_at=event.now + event.lease_seconds)
    if isinstance(event, Sent):
        _check(d, event, event.owner)
        if d.phase == "echo":
            raise DeliveryTransitionRefused(d, event, "the echo has not been sent")
        return attrs.evolve(
            d,
            status=DeliveryStatus.DELIVERED,
            owner=None,
            lease_expires_at=None,
            updated_at=event.now,
            delivered_at=event.now,
            last_error=None,
            failing_since=None,
        )
    if isinstance(event, SendFailed):
        _check(d, event, event.owner)
        released = attrs.evolve(
            d, owner=None, lease_expires_at=None, updated_at=event.now, last_error=event.reason
        )
        if event.kind is FailureKind.PERMANENT or d.attempts >= d.retry.max_attempts:
            return attrs.evolve(released, status=DeliveryStatus.DEAD)
        retry_after = event.retry_after
        if retry_after is not None and not (
            math.isfinite(retry_after) and retry_after <= d.retry.max_retry_after_seconds
        ):
            return attrs.evolve(
                released,
                status=DeliveryStatus.DEAD,
                last_error=f"{event.reason} (retry-after beyond "
                f"{d.retry.max_retry_after_seconds:g}s)",
            )
        since = d.failing_since if d.failing_since is not None else event.now
        wait = max(d.retry.delay(d.attempts, event.jitter), retry_after or 0.0)
        if event.now + wait > since + d.retry.budget_seconds:
            return attrs.evolve(released, status=DeliveryStatus.DEAD, failing_since=since)
        return attrs.evolve(
            released,
            status=DeliveryStatus.FAILED,
            next_attempt_at=event.now + wait,
            failing_since=since,
        )
    if isinstance(event, Interrupted):
        _check(d, event, event.owner)
        if event.in_flight and not event.idempotent_push:
            return attrs.evolve(
                d,
                status=DeliveryStatus.UNKNOWN,
                owner=None,
                lease_expires_at=None,
                updated_at=event.now,
                last_error="a shutdown stopped a send in flight; the platform may have it",
            )
        return attrs.evolve(
            d,
            status=DeliveryStatus.SCHEDULED,
            attempts=d.attempts - 1,
            owner=None,
            lease_expires_at=None,
            updated_at=event.now,
        )
    if isinstance(event, Recover):
        if not d.is_abandoned(event.now):
            return d
        # Out of attempts, scheduling it again would let the next claim exceed max_attempts.
        retry = event.idempotent_push and d.attempts < d.retry.max_attempts
        status = DeliveryStatus.SCHEDULED if retry else DeliveryStatus.UNKNOWN
        return attrs.evolve(
            d,
            status=status,
            owner=None,
            lease_expires_at=None,
            updated_at=event.now,
            last_error="the sender stopped during a send; the platform may have it",
        )
    # Replay
    return attrs.evolve(
        d,
        status=DeliveryStatus.SCHEDULED,
        attempts=0,
        failing_since=None,
        next_attempt_at=event.now,
        updated_at=event.now,
    )
