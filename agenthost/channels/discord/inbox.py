"""The durable inbox: an interaction is recorded before Discord is told it was received.

Rules (design §8):

1. An interaction is recorded, in one ``insert_channel_records`` call, as a ``seen`` mark
   keyed by its id with its payload as the mark's companion (kind ``inbox``). The store
   inserts the mark only where it is absent, so of two deliveries of one id (a replay, or
   two replicas sharing the store) exactly one is recorded and handled; the other is
   acknowledged and runs nothing. Only then is the deferral sent back to Discord, so a
   crash after it loses nothing: the next start handles what the inbox still holds (the
   reply goes through the interaction token while it lives, the bot's API after).
2. Marks expire after ``dedupe_seconds``, which is longer than the signature's replay
   window: an id older than that window is refused before it gets here.
3. Interactions are handled in arrival order within a channel, one at a time; different
   channels run concurrently, up to a bound. At most ``max_pending`` wait in memory: past
   that, :meth:`accept` answers ``BUSY`` without recording, and the user is told to try
   again (an interaction must be answered within three seconds, so it cannot wait).
4. A handled interaction's record is deleted; so is one whose handling raised (logged by
   type), so it cannot come back at every start. One interrupted by shutdown stays.

Keys are the snowflake zero-padded to 20 digits, so key order is arrival order.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from agenthost.backends.channel import HostServices
from agenthost.stores.base import ChannelRecord

log = logging.getLogger("agenthost.channels.discord")

INBOX = "inbox"
SEEN = "seen"

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
        self._channel = channel
        self._handle = handle
        self._dedupe_seconds = dedupe_seconds
        self._max_pending = max_pending
        self._limiter = anyio.CapacityLimiter(max_concurrent_channels)
        self._queues: dict[str, deque[tuple[str, Mapping[str, Any], float]]] = {}
        self._active: set[str] = set()
        self._known: set[str] = set()  # keys being recorded, queued or handled here
        self._tasks: anyio.abc.TaskGroup | None = None
        self._idle = anyio.Event()
        self._idle.set()

    async def accept(self, interaction_id: str, payload: Mapping[str, Any]) -> Accepted:
        """Record a verified interaction unless its id was seen (rule 1), then queue it.

        Raises what the store raises: the caller must then not acknowledge it."""
        key = interaction_key(interaction_id)
        if key in self._known:
            return Accepted.REPEATED
        if len(self._known) >= self._max_pending:
            return Accepted.BUSY
        self._known.add(key)
        now = self._host.now()
        try:
            mark = ChannelRecord(
                self._channel, SEEN, key, {}, created_at=now, expires_at=now + self._dedupe_seconds
            )
            stored = ChannelRecord(
                self._channel,
                INBOX,
                key,
                {"interaction": dict(payload), "received_at": now},
                created_at=now,
            )
            inserted = await self._host.store.insert_channel_records(
                [mark], companions={key: [stored]}
            )
        except BaseException:
            self._known.discard(key)
            raise
        if key not in inserted:
            self._known.discard(key)
            return Accepted.REPEATED
        self._enqueue(key, payload, now)
        return Accepted.NEW

    async def recover(self, page: int = 500) -> int:
        """Queue what the inbox still holds (a crash or a stop left it); returns how many."""
        after: str | None = None
        recovered = 0
        while True:
            records = await self._host.store.list_channel_records(
                self._channel, INBOX, after=after, limit=page
            )
            for record in records:
                payload = record.value.get("interaction")
                received = record.value.get("received_at")
                if record.key in self._known or not isinstance(payload, Mapping):
                    continue
                self._known.add(record.key)
                at = float(received) if isinstance(received, int | float) else record.created_at
                self._enqueue(record.key, payload, at)
                recovered += 1
            if len(records) < page:
                break
            after = records[-1].key
        if recovered:
            log.info("discord inbox recovered interactions", extra={"interactions": recovered})
        return recovered

    async def run(self) -> None:
        """Handle queued interactions until cancelled (the host's lifespan task)."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            for lane in list(self._queues):
                self._start(lane)
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    async def wait_idle(self) -> None:
        """Until nothing is queued or being handled (for tests and benchmarks)."""
        await self._idle.wait()

    def _enqueue(self, key: str, payload: Mapping[str, Any], received_at: float) -> None:
        channel_id = payload.get("channel_id")
        lane = str(channel_id) if isinstance(channel_id, str) else f"interaction:{key}"
        self._queues.setdefault(lane, deque()).append((key, payload, received_at))
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._start(lane)

    def _start(self, lane: str) -> None:
        if self._tasks is not None and lane not in self._active:
            self._active.add(lane)
            self._tasks.start_soon(self._drain, lane, name=f"discord channel {lane}")

    async def _drain(self, lane: str) -> None:
        try:
            while queue := self._queues.get(lane):
                key, payload, received_at = queue[0]
                async with self._limiter:
                    await self._handle_one(key, payload, received_at)
                queue.popleft()
        finally:
            self._active.discard(lane)
            if not self._queues.get(lane):
                self._queues.pop(lane, None)
            if not self._queues:
                self._idle.set()

    async def _handle_one(self, key: str, payload: Mapping[str, Any], received_at: float) -> None:
        try:
            await self._handle(payload, received_at)
        except Exception as error:
            # Logged by type only: an error's text may quote the user's message.
            log.error(
                "discord interaction failed; dropped",
                extra={"interaction_id": key.lstrip("0"), "error_type": type(error).__name__},
            )
        with anyio.CancelScope(shield=True):
            await self._host.store.delete_channel_records(self._channel, INBOX, prefix=key)
        self._known.discard(key)
