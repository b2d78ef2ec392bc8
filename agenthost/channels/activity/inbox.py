"""The Activity channel's durable inbox: an activity is recorded before it is acknowledged.

The rules are the shared inbox's (``agenthost.backends.inbox``); what is this channel's own:

1. A verified activity that needs a turn is recorded before the Bot Connector hears 200,
   together with the conversation's reference (written in the same store call). Its mark
   is the activity's identity (channel, conversation and activity id), so a redelivered
   activity is acknowledged and handled once, on any replica sharing the store.
2. A conversation is a lane. Past ``max_pending`` waiting activities :meth:`accept` raises
   :class:`InboxFull`, and the webhook answers 503 (the connector retries).

Records: ``inbox`` keyed by ``<arrival microseconds, zero-padded>.<mark>`` (key order is
arrival order) holding ``{"lane": conversation, "job": ...}``; ``seen`` keyed by the
SHA-256 of the activity's identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from agenthost.backends.channel import HostServices
from agenthost.backends.inbox import INBOX, SEEN, Arrival, DurableInbox
from agenthost.stores.base import ChannelRecord

__all__ = ["INBOX", "SEEN", "Inbox", "InboxFull"]

Handler = Callable[[Mapping[str, Any]], Awaitable[None]]


class InboxFull(Exception):
    """Too many activities wait in this process; the caller should retry later."""


class Inbox:
    def __init__(
        self,
        host: HostServices,
        *,
        channel: str,
        handle: Handler,
        dedupe_seconds: float,
        max_concurrent_conversations: int,
        max_pending: int,
    ) -> None:
        self._host = host
        self._handle = handle
        self._last_arrival = 0
        self._inbox = DurableInbox(
            host,
            channel=channel,
            label="activity",
            handle=self._handle_item,
            restore=lambda record: _arrival(record.key, record.value),
            dedupe_seconds=dedupe_seconds,
            max_concurrent_lanes=max_concurrent_conversations,
            max_pending=max_pending,
        )

    async def accept(
        self,
        identity: str | None,
        lane: str,
        job: Mapping[str, Any],
        *,
        put: Sequence[ChannelRecord] = (),
    ) -> bool:
        """Record ``job`` (and write ``put``) unless ``identity`` was seen; queue it.

        Returns whether it was new. Raises :class:`InboxFull`, or what the store raises:
        the caller must then not acknowledge the activity.
        """
        if self._inbox.full:
            raise InboxFull
        now = self._host.now()
        mark = hashlib.sha256((identity or "").encode("utf-8")).hexdigest()
        # Arrival order within this process even when the clock repeats a microsecond.
        self._last_arrival = max(self._last_arrival + 1, int(now * 1_000_000))
        key = f"{self._last_arrival:020d}.{mark[:16]}"
        arrival = _arrival(key, {"lane": lane, "job": dict(job)})
        if identity is not None:  # else nothing to de-duplicate on: recorded as it is
            arrival = Arrival(arrival.key, arrival.value, arrival.lane, arrival.item, mark=mark)
        return bool(await self._inbox.record([arrival], put=put))

    async def recover(self, page: int = 500) -> int:
        """Queue what the inbox holds and no live replica handles; returns how many."""
        return await self._inbox.recover(page)

    async def stop(self) -> None:
        """Start nothing more; wait for what is being handled; let other replicas take the
        rest (the shared inbox's rule 7). The host bounds the wait."""
        await self._inbox.stop()

    async def run(self) -> None:
        """Handle queued activities until cancelled (the host's lifespan task)."""
        await self._inbox.run()

    async def wait_idle(self) -> None:
        """Until nothing is queued or being handled (for tests and benchmarks)."""
        await self._inbox.wait_idle()

    async def _handle_item(self, job: Any) -> None:
        if isinstance(job, Mapping):  # a record of another shape is dropped, not retried
            await self._handle(job)


def _arrival(key: str, value: Mapping[str, Any]) -> Arrival:
    return Arrival(key, value, str(value.get("lane") or key), value.get("job"))
