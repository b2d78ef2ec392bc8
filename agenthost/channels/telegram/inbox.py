"""Telegram's durable inbox: updates are recorded before they are acknowledged, then handled.

The rules are the shared inbox's (``agenthost.backends.inbox``); what is Telegram's own:

1. The webhook answers 200 only after the update is recorded, and the poller asks for the
   next batch (which confirms this one) only after the batch, its de-duplication marks and
   the new offset are stored, all in one store call.
2. Each update id is remembered (kind ``seen``) for a window (a day by default: Telegram
   keeps updates at most that long). An id already seen is acknowledged and not handled
   again. Ids are compared exactly, never as "older than the last one", because Telegram
   starts again from a random id after a week without updates.
3. A chat is a lane: its updates are handled in arrival order, one at a time.

Records: ``inbox`` keyed by the zero-padded update id (so key order is arrival order),
``seen`` keyed the same way with ``expires_at``, and ``cursor`` (key ``offset``) for polling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from agenthost.backends.channel import HostServices
from agenthost.backends.inbox import INBOX, SEEN, Arrival, DurableInbox
from agenthost.stores.base import ChannelRecord

__all__ = ["CURSOR", "INBOX", "OFFSET_KEY", "SEEN", "Inbox", "update_key"]

CURSOR = "cursor"
OFFSET_KEY = "offset"

# The handler gets the stored update and what the receiver already parsed of it (``None``
# for an update recovered from the store, which the handler parses again).
Handler = Callable[[Mapping[str, Any], Any], Awaitable[None]]
Received = tuple[int, Mapping[str, Any], Any]  # (update_id, update, parsed)
ChatOf = Callable[[Mapping[str, Any]], "int | None"]


def update_key(update_id: int) -> str:
    return f"{update_id:020d}"


class Inbox:
    def __init__(
        self,
        host: HostServices,
        *,
        channel: str,
        handle: Handler,
        chat_of: ChatOf,
        dedupe_seconds: float,
        max_concurrent_chats: int,
    ) -> None:
        self._host = host
        self._channel = channel
        self._handle = handle
        self._chat_of = chat_of
        self._inbox = DurableInbox(
            host,
            channel=channel,
            label="telegram update",
            handle=self._handle_item,
            restore=lambda record: self._arrival(record.key, record.value, None),
            dedupe_seconds=dedupe_seconds,
            max_concurrent_lanes=max_concurrent_chats,
        )

    async def accept(self, updates: Sequence[Received], *, offset: int | None = None) -> int:
        """Record the updates not seen before (and the poller's ``offset``), then queue them.

        Returns how many were new. Raises what the store raises: the caller must then not
        acknowledge the updates.
        """
        put = []
        if offset is not None:
            now = self._host.now()
            put.append(
                ChannelRecord(self._channel, CURSOR, OFFSET_KEY, {"offset": offset}, created_at=now)
            )
        arrivals = [
            self._arrival(update_key(uid), update, parsed) for uid, update, parsed in updates
        ]
        return len(await self._inbox.record(arrivals, put=put))

    async def load_offset(self) -> int | None:
        record = await self._host.store.get_channel_record(self._channel, CURSOR, OFFSET_KEY)
        if record is None:
            return None
        offset = record.value.get("offset")
        return offset if isinstance(offset, int) else None

    async def recover(self, page: int = 500) -> int:
        """Queue what the inbox holds and no live replica handles; returns how many."""
        return await self._inbox.recover(page)

    async def stop(self) -> None:
        """Start nothing more; wait for what is being handled; let other replicas take the
        rest (the shared inbox's rule 7). The host bounds the wait."""
        await self._inbox.stop()

    async def run(self) -> None:
        """Handle queued updates until cancelled (the host's lifespan task)."""
        await self._inbox.run()

    async def wait_idle(self) -> None:
        """Until nothing is queued or being handled (for tests and benchmarks)."""
        await self._inbox.wait_idle()

    def _arrival(self, key: str, update: Mapping[str, Any], parsed: Any) -> Arrival:
        chat = self._chat_of(update)
        lane = str(chat) if chat is not None else f"update:{key}"
        return Arrival(key, dict(update), lane, (update, parsed), mark=key)

    async def _handle_item(self, item: tuple[Mapping[str, Any], Any]) -> None:
        update, parsed = item
        await self._handle(update, parsed)
