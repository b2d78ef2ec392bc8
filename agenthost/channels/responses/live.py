"""Background responses while they run: their event log, its writers and its readers.

A background run's events are stored (``event`` records) before anyone sees them, so a
client that reads events up to sequence number N can always resume with
``starting_after=N``: nothing it saw is renumbered, and nothing after it is skipped.

- :class:`BackgroundRun` is the writer for one attempt of a run. The host's worker streams
  the run's updates into it; each update's events are written in one batch and then the
  readers in this process are woken. A run that runs again (after a crash, or after a
  shutdown suspended it) continues the sequence numbers after the last stored event and
  streams its items again from the first; its final response holds that last run's items.
- :class:`EventLog` is what readers follow: they read stored events past their cursor,
  wait for a wake-up (or poll, for runs on another replica), and stop after the terminal
  event or once the response is settled.

Decisions about runs (status, cancellation, retries) are the host's; this module only
moves events between the run and the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from agenthost.backends.targets import StreamUpdate
from agenthost.channels.responses.events import (
    TERMINAL_EVENTS,
    NewId,
    ResponseEvents,
    ServerToolCalls,
)
from agenthost.channels.responses.records import Records

# A new background response is stored with two events already: created (0), queued (1).
FIRST_RUN_SEQUENCE = 2
_READ_BATCH = 500


class EventLog:
    """Stored events of background responses, and wake-ups for readers in this process."""

    def __init__(self, records: Records, *, poll_seconds: float) -> None:
        self._records = records
        self._poll_seconds = poll_seconds
        self._wakeups: dict[str, anyio.Event] = {}
        self._followers: dict[str, int] = {}

    async def append(self, response_id: str, events: list[dict[str, Any]], owner: str) -> None:
        if events:
            await self._records.put(self._records.event_records(response_id, events, owner))
            self.wake(response_id)

    def wake(self, response_id: str) -> None:
        event = self._wakeups.pop(response_id, None)
        if event is not None:
            event.set()

    def _wakeup(self, response_id: str) -> anyio.Event:
        event = self._wakeups.get(response_id)
        if event is None:
            event = self._wakeups[response_id] = anyio.Event()
        return event

    async def follow(
        self,
        response_id: str,
        starting_after: int,
        emit: Callable[[list[dict[str, Any]]], Awaitable[None]],
        settled: Callable[[], Awaitable[bool]],
    ) -> None:
        """Emit stored events past ``starting_after`` as they arrive, until the end."""
        self._followers[response_id] = self._followers.get(response_id, 0) + 1
        try:
            await self._follow(response_id, starting_after, emit, settled)
        finally:
            left = self._followers.pop(response_id) - 1
            if left:
                self._followers[response_id] = left
            else:
                self._wakeups.pop(response_id, None)  # nobody waits for it any more

    async def _follow(
        self,
        response_id: str,
        starting_after: int,
        emit: Callable[[list[dict[str, Any]]], Awaitable[None]],
        settled: Callable[[], Awaitable[bool]],
    ) -> None:
        cursor = starting_after
        draining = False
        while True:
            # Taken before reading, so an append between the read and the wait still wakes.
            wakeup = self._wakeup(response_id)
            batch = await self._records.events_after(response_id, cursor, _READ_BATCH)
            if batch:
                await emit(batch)
                cursor = int(batch[-1]["sequence_number"])
                if any(event["type"] in TERMINAL_EVENTS for event in batch):
                    return
                if len(batch) == _READ_BATCH:
                    continue
            if draining:
                return
            if await settled():
                draining = True  # one more read: events written just before settling
                continue
            with anyio.move_on_after(self._poll_seconds):
                await wakeup.wait()


class BackgroundRun:
    """The event writer of one attempt of one background response."""

    def __init__(
        self,
        *,
        response_id: str,
        response: Mapping[str, Any],
        owner: str,
        log: EventLog,
        records: Records,
        new_id: NewId,
        server_tool_calls: ServerToolCalls = "omit",
    ) -> None:
        self.response_id = response_id
        self.owner = owner
        self.lock = anyio.Lock()
        self.machine: ResponseEvents | None = None
        self.closed = False
        self._response = response
        self._log = log
        self._records = records
        self._new_id = new_id
        self._server_tool_calls: ServerToolCalls = server_tool_calls

    async def on_update(self, update: StreamUpdate) -> None:
        async with self.lock:
            if self.closed:
                return
            machine, events = await self.start()
            if update.raw is not None:
                events += machine.feed(update.raw)
            else:
                events += machine.feed_text(update.text)
            await self._log.append(self.response_id, events, self.owner)

    async def start(self) -> tuple[ResponseEvents, list[dict[str, Any]]]:
        """The machine, started (with its ``response.in_progress`` event) if it was not."""
        if self.machine is not None:
            return self.machine, []
        # After whatever is stored: a run suspended by a shutdown or recovered after a crash
        # runs again from the start, and its events continue the numbers.
        last = await self._records.last_sequence(self.response_id)
        sequence = max(FIRST_RUN_SEQUENCE, last + 1)
        self.machine = ResponseEvents(
            self._response,
            new_id=self._new_id,
            next_sequence=sequence,
            server_tool_calls=self._server_tool_calls,
        )
        return self.machine, self.machine.in_progress()
