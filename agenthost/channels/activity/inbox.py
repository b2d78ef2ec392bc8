"""The durable inbox: an activity is recorded before it is acknowledged, then handled.

Rules (design §8):

1. A verified activity that needs a turn is recorded before the Bot Connector hears 200:
   one ``insert_channel_records`` call inserts its de-duplication mark and, only where the
   mark was absent, its inbox record, and writes the conversation's reference with them.
   So a redelivered activity (same channel, conversation and activity id) is acknowledged
   and handled once, on any replica sharing the store, and a crash after the 200 loses
   nothing: the next start handles what the inbox still holds.
2. Marks (kind ``seen``) expire after ``dedupe_seconds``.
3. Activities are handled in arrival order within a conversation, one at a time;
   conversations run concurrently up to a bound. At most ``max_pending`` activities wait in
   this process: past that the webhook answers 503 (the connector retries) instead of
   queueing without bound. A handled activity's record is deleted, and so is one whose
   handling raised (logged), so one poisonous activity cannot block its conversation; one
   interrupted by shutdown stays for the next start.

Records: ``inbox`` keyed by ``<arrival microseconds, zero-padded>.<mark>`` (key order is
arrival order) holding ``{"lane": conversation, "job": ...}``; ``seen`` keyed by the
SHA-256 of the activity's identity.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from agenthost.backends.channel import HostServices
from agenthost.stores.base import ChannelRecord

log = logging.getLogger("agenthost.channels.activity")

INBOX = "inbox"
SEEN = "seen"

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
        self._channel = channel
        self._handle = handle
        self._dedupe_seconds = dedupe_seconds
        self._max_pending = max_pending
        self._limiter = anyio.CapacityLimiter(max_concurrent_conversations)
        self._queues: dict[str, deque[tuple[str, Mapping[str, Any]]]] = {}
        self._pending = 0
        self._active: set[str] = set()
        self._last_arrival = 0
        self._tasks: anyio.abc.TaskGroup | None = None
        self._idle = anyio.Event()
        self._idle.set()

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
        if self._pending >= self._max_pending:
            raise InboxFull
        now = self._host.now()
        mark = hashlib.sha256((identity or "").encode("utf-8")).hexdigest()
        # Arrival order within this process even when the clock repeats a microsecond.
        self._last_arrival = max(self._last_arrival + 1, int(now * 1_000_000))
        key = f"{self._last_arrival:020d}.{mark[:16]}"
        value = {"lane": lane, "job": dict(job)}
        record = ChannelRecord(self._channel, INBOX, key, value, created_at=now)
        store = self._host.store
        if identity is None:  # nothing to de-duplicate on
            await store.put_channel_records([record, *put])
        else:
            seen = ChannelRecord(
                self._channel, SEEN, mark, {}, created_at=now, expires_at=now + self._dedupe_seconds
            )
            inserted = await store.insert_channel_records(
                [seen], companions={mark: [record]}, put=put
            )
            if mark not in inserted:
                return False
        self._enqueue(key, value)
        return True

    async def recover(self, page: int = 500) -> int:
        """Queue what the inbox still holds (a crash or a stop left it); returns how many."""
        after: str | None = None
        recovered = 0
        while True:
            records = await self._host.store.list_channel_records(
                self._channel, INBOX, after=after, limit=page
            )
            for record in records:
                self._enqueue(record.key, record.value)
                recovered += 1
            if len(records) < page:
                break
            after = records[-1].key
        if recovered:
            log.info("activity inbox recovered activities", extra={"activities": recovered})
        return recovered

    async def run(self) -> None:
        """Handle queued activities until cancelled (the host's lifespan task)."""
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

    def _enqueue(self, key: str, value: Mapping[str, Any]) -> None:
        lane = str(value.get("lane") or key)
        self._queues.setdefault(lane, deque()).append((key, value))
        self._pending += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._start(lane)

    def _start(self, lane: str) -> None:
        if self._tasks is not None and lane not in self._active:
            self._active.add(lane)
            self._tasks.start_soon(self._drain, lane, name="activity conversation")

    async def _drain(self, lane: str) -> None:
        try:
            while queue := self._queues.get(lane):
                key, value = queue[0]
                async with self._limiter:
                    await self._handle_one(key, value)
                queue.popleft()
                self._pending -= 1
        finally:
            self._active.discard(lane)
            if not self._queues.get(lane):
                self._queues.pop(lane, None)
            if not self._queues:
                self._idle.set()

    async def _handle_one(self, key: str, value: Mapping[str, Any]) -> None:
        job = value.get("job")
        try:
            if isinstance(job, Mapping):
                await self._handle(job)
        except Exception as error:
            # Logged by type only: an error's text may quote the user's message.
            log.error(
                "activity handling failed; dropped",
                extra={"inbox_key": key, "error_type": type(error).__name__},
            )
        with anyio.CancelScope(shield=True):
            await self._host.store.delete_channel_records(self._channel, INBOX, prefix=key)
