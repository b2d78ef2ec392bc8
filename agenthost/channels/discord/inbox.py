"""Discord's durable inbox: an interaction is recorded before Discord is told it was received.

The rules are the shared inbox's (``agenthost.backends.inbox``); what is Discord's own:

1. The mark is the interaction id, so of two deliveries of one id (a replay, or two
   replicas sharing the store) exactly one is recorded and handled; the other is
   acknowledged and runs nothing. Only after the record is the deferral sent back, so a
   crash after it loses nothing (the reply goes through the interaction token while it
   lives, the bot's API after).
2. Marks expire after ``dedupe_seconds``, which is longer than the signature's replay
   window: an id older than that window is refused before it gets here.
3. A Discord channel is a lane. Past ``max_pending`` waiting interactions, :meth:`accept`
   answers ``BUSY`` without recording, and the user is told to try again (an interaction
   must be answered within three seconds, so it cannot wait).

Keys are the snowflake zero-padded to 20 digits, so key order is arrival order.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agenthost.backends.channel import HostServices
from agenthost.backends.inbox import INBOX, SEEN, Arrival, DurableInbox
from agenthost.stores.base import ChannelRecord

__all__ = ["INBOX", "SEEN", "Accepted", "Inbox", "interaction_key"]

# The handler gets the stored payload and the time the interaction was received.
Handler = Callable[[Mapping[str, Any], float], Awaitable[None]]


class Accepted(enum.Enum):
    NEW = "new"
    REPEATED = "repeated"
    BUSY = "busy"


def interaction_key(interaction_id: str) -> str:
    return interaction_id.zfill(20)


class Inbox:
    def __init__(
        self,
        host: HostServices,
        *,
        channel: str,
        handle: Handler,
        dedupe_seconds: float,
        max_concurrent_channels: int,
        max_pending: int,
    ) -> None:
        self._host = host
        self._handle = handle
        self._inbox = DurableInbox(
            host,
            channel=channel,
            label="discord interaction",
            handle=self._handle_item,
            restore=_restore,
            dedupe_seconds=dedupe_seconds,
            max_concurrent_lanes=max_concurrent_channels,
            max_pending=max_pending,
        )

    async def accept(self, interaction_id: str, payload: Mapping[str, Any]) -> Accepted:
        """Record a verified interaction unless its id was seen, then queue it.

        Raises what the store raises: the caller must then not acknowledge it."""
        key = interaction_key(interaction_id)
        if self._inbox.knows(key):
            return Accepted.REPEATED
        if self._inbox.full:
            return Accepted.BUSY
        now = self._host.now()
        arrival = _arrival(key, {"interaction": dict(payload), "received_at": now}, now)
        assert arrival is not None  # the payload is a mapping
        recorded = await self._inbox.record([arrival])
        return Accepted.NEW if recorded else Accepted.REPEATED

    async def recover(self, page: int = 500) -> int:
        """Queue what the inbox holds and no live replica handles; returns how many."""
        return await self._inbox.recover(page)

    async def stop(self) -> None:
        """Start nothing more; wait for what is being handled; let other replicas take the
        rest (the shared inbox's rule 7). The host bounds the wait."""
        await self._inbox.stop()

    async def run(self) -> None:
        """Handle queued interactions until cancelled (the host's lifespan task)."""
        await self._inbox.run()

    async def wait_idle(self) -> None:
        """Until nothing is queued or being handled (for tests and benchmarks)."""
        await self._inbox.wait_idle()

    async def _handle_item(self, item: tuple[Mapping[str, Any], float]) -> None:
        payload, received_at = item
        await self._handle(payload, received_at)


def _arrival(key: str, value: Mapping[str, Any], received_at: float) -> Arrival | None:
    payload = value.get("interaction")
    if not isinstance(payload, Mapping):
        return None  # not ours to read: it stays for an operator
    channel_id = payload.get("channel_id")
    lane = str(channel_id) if isinstance(channel_id, str) else f"interaction:{key}"
    return Arrival(key, value, lane, (payload, received_at), mark=key)


def _restore(record: ChannelRecord) -> Arrival | None:
    received = record.value.get("received_at")
    at = float(received) if isinstance(received, int | float) else record.created_at
    return _arrival(record.key, record.value, at)
