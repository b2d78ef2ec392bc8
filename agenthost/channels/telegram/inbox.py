"""The durable inbox: updates are recorded before they are acknowledged, then handled.

Rules (design §8):

1. An update is recorded before Telegram hears that it arrived: the webhook answers 200
   only after the record is stored, and the poller asks for the next batch (which confirms
   this one) only after the batch, its de-duplication marks and the new offset are stored,
   all in one ``insert_channel_records`` call. That call inserts a mark, and the update's
   inbox record with it, only where the mark is absent, so replicas sharing the store
   record an update once. A crash after the acknowledgement loses nothing: the next start
   handles what the inbox still holds.
2. Each update id is remembered (kind ``seen``) for a window (a day by default: Telegram
   keeps updates at most that long). An id already seen is acknowledged and not handled
   again. Ids are compared exactly, never as "older than the last one", because Telegram
   starts again from a random id after a week without updates.
3. Updates are handled in arrival order within a chat, one at a time; different chats run
   concurrently, up to a bound. A handled update's record is deleted. An update whose
   handling raised is deleted too (and logged), so one poisonous update cannot block its
   chat forever; an update interrupted by shutdown stays for the next start.
4. Within this process an update being recorded or waiting is never accepted twice, even
   when Telegram delivers it again concurrently.

Records: ``inbox`` keyed by the zero-padded update id (so key order is arrival order),
``seen`` keyed the same way with ``expires_at``, and ``cursor`` (key ``offset``) for polling.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from agenthost.backends.channel import HostServices
from agenthost.stores.base import ChannelRecord

log = logging.getLogger("agenthost.channels.telegram")

INBOX = "inbox"
SEEN = "seen"
CURSOR = "cursor"
OFFSET_KEY = "offset"

# The handler gets the stored update and what the receiver already parsed of it (``None``
# for an update recovered from the store, which the handler parses again).
Handler = Callable[[Mapping[str, Any], Any], Awaitable[None]]
Arrival = tuple[int, Mapping[str, Any], Any]  # (update_id, update, parsed)
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
        self._dedupe_seconds = dedupe_seconds
        self._limiter = anyio.CapacityLimiter(max_concurrent_chats)
        self._queues: dict[str, deque[tuple[str, Mapping[str, Any], Any]]] = {}
        self._active: set[str] = set()
        self._known: set[str] = set()  # keys being recorded, queued or handled here
        self._tasks: anyio.abc.TaskGroup | None = None
        self._idle = anyio.Event()
        self._idle.set()

    # --- recording ---------------------------------------------------------------------

    async def accept(self, updates: Sequence[Arrival], *, offset: int | None = None) -> int:
        """Record the updates not seen before (and the poller's ``offset``), then queue them.

        Returns how many were new. Raises what the store raises: the caller must then not
        acknowledge the updates.
        """
        store = self._host.store
        fresh: list[tuple[str, Mapping[str, Any], Any]] = []
        for update_id, update, parsed in updates:
            key = update_key(update_id)
            if key in self._known or any(key == k for k, _, _ in fresh):
                continue
            fresh.append((key, update, parsed))
        self._known.update(key for key, _, _ in fresh)
        try:
            now = self._host.now()
            # One transaction: each fresh update's ``seen`` mark is inserted only if absent
            # and, when it is, the update's inbox record with it; the poller's offset is
            # written regardless. So exactly one replica (or one delivery of a repeated
            # update) records an update, and the store's answer names the new ones.
            marks = [
                ChannelRecord(
                    self._channel,
                    SEEN,
                    key,
                    {},
                    created_at=now,
                    expires_at=now + self._dedupe_seconds,
                )
                for key, _, _ in fresh
            ]
            payloads = {
                key: [ChannelRecord(self._channel, INBOX, key, dict(update), created_at=now)]
                for key, update, _ in fresh
            }
            cursor = (
                [
                    ChannelRecord(
                        self._channel, CURSOR, OFFSET_KEY, {"offset": offset}, created_at=now
                    )
                ]
                if offset is not None
                else []
            )
            inserted = (
                await store.insert_channel_records(marks, companions=payloads, put=cursor)
                if marks or cursor
                else set()
            )
            new = [(key, update, parsed) for key, update, parsed in fresh if key in inserted]
        except BaseException:
            self._known.difference_update(key for key, _, _ in fresh)
            raise
        new_keys = {key for key, _, _ in new}
        self._known.difference_update(key for key, _, _ in fresh if key not in new_keys)
        for key, update, parsed in new:
            self._enqueue(key, update, parsed)
        return len(new)

    async def load_offset(self) -> int | None:
        record = await self._host.store.get_channel_record(self._channel, CURSOR, OFFSET_KEY)
        if record is None:
            return None
        offset = record.value.get("offset")
        return offset if isinstance(offset, int) else None

    async def recover(self, page: int = 500) -> int:
        """Queue what the inbox still holds (a crash or a stop left it); returns how many."""
        after: str | None = None
        recovered = 0
        while True:
            records = await self._host.store.list_channel_records(
                self._channel, INBOX, after=after, limit=page
            )
            for record in records:
                if record.key not in self._known:
                    self._known.add(record.key)
                    self._enqueue(record.key, record.value, None)
                    recovered += 1
            if len(records) < page:
                break
            after = records[-1].key
        if recovered:
            log.info("telegram inbox recovered updates", extra={"updates": recovered})
        return recovered

    # --- handling ----------------------------------------------------------------------

    async def run(self) -> None:
        """Handle queued updates until cancelled (the host's lifespan task)."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            for chat in list(self._queues):
                self._start(chat)
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    async def wait_idle(self) -> None:
        """Until nothing is queued or being handled (for tests and benchmarks)."""
        await self._idle.wait()

    def _enqueue(self, key: str, update: Mapping[str, Any], parsed: Any) -> None:
        chat = self._chat_of(update)
        lane = str(chat) if chat is not None else f"update:{key}"
        self._queues.setdefault(lane, deque()).append((key, update, parsed))
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._start(lane)

    def _start(self, lane: str) -> None:
        if self._tasks is not None and lane not in self._active:
            self._active.add(lane)
            self._tasks.start_soon(self._drain, lane, name=f"telegram chat {lane}")

    async def _drain(self, lane: str) -> None:
        try:
            while queue := self._queues.get(lane):
                key, update, parsed = queue[0]
                async with self._limiter:
                    await self._handle_one(key, update, parsed)
                queue.popleft()
        finally:
            self._active.discard(lane)
            if not self._queues.get(lane):
                self._queues.pop(lane, None)
            if not self._queues:
                self._idle.set()

    async def _handle_one(self, key: str, update: Mapping[str, Any], parsed: Any) -> None:
        try:
            await self._handle(update, parsed)
        except Exception as error:
            # Logged by type only: an error's text may quote the user's message.
            log.error(
                "telegram update failed; dropped",
                extra={"update_id": int(key), "error_type": type(error).__name__},
            )
        with anyio.CancelScope(shield=True):
            cleared = await self._clear(key)
        if cleared:
            self._known.discard(key)
        # Not cleared (the store is stalled): the key stays known, so this process never
        # handles the update again; a restart would (at least once, like after a crash).

    async def _clear(self, key: str) -> bool:
        """Delete the handled update's record, riding out a short store stall."""
        for wait in (0.5, 1.0, 2.0, None):
            try:
                await self._host.store.delete_channel_records(self._channel, INBOX, prefix=key)
                return True
            except Exception as error:
                if wait is None:
                    log.error(
                        "telegram inbox record not cleared",
                        extra={"update_id": int(key), "error_type": type(error).__name__},
                    )
                    return False
                await anyio.sleep(wait)
        return False  # pragma: no cover - the loop returns
