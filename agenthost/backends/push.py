"""The push seam: how the delivery worker hands one message to a channel that can push.

A channel that can push implements :class:`ChannelPush`. It sends one message and answers
with a :class:`PushOutcome` that classifies failures for the delivery lifecycle: transient
ones are retried (honouring ``retry_after``), permanent ones go to the dead letters. It
raises only for cancellation; any other exception counts as transient.

A channel that sends a reply in several parts skips the first ``message.parts_sent`` of
them and awaits ``message.on_part_sent(n)`` after each part goes out, so the worker records
the cursor and a retry, a recovery or a replay never repeats a part. A channel may declare
``push_timeout_seconds`` (the longest one request of a push may take); the host refuses a
delivery lease that is not longer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from agenthost.sansio_core.delivery import FailureKind
from agenthost.sansio_core.routing import Destination


@attrs.frozen
class PushMessage:
    """One message to push. ``delivery_id`` is the idempotency key (stable across retries)."""

    delivery_id: str
    text: str
    is_echo: bool = False
    silent: bool = False  # send without a notification where the platform allows
    isolation_key: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    parts_sent: int = 0  # the first parts of this reply already went out: skip them
    #: awaited with the number of parts out so far, after each part is sent
    on_part_sent: Callable[[int], Awaitable[None]] | None = attrs.field(default=None, eq=False)


@attrs.frozen
class PushOutcome:
    delivered: bool
    failure: FailureKind | None = None
    reason: str | None = None
    retry_after: float | None = None

    @classmethod
    def ok(cls) -> PushOutcome:
        return cls(delivered=True)

    @classmethod
    def transient(cls, reason: str, *, retry_after: float | None = None) -> PushOutcome:
        return cls(False, FailureKind.TRANSIENT, reason, retry_after)

    @classmethod
    def permanent(cls, reason: str) -> PushOutcome:
        return cls(False, FailureKind.PERMANENT, reason)


@runtime_checkable
class ChannelPush(Protocol):
    """A channel that can deliver without a request to answer."""

    #: True when the platform drops a repeated ``delivery_id``; a send interrupted by a
    #: crash is then retried instead of being parked as ``unknown``.
    push_is_idempotent: bool

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome: ...
