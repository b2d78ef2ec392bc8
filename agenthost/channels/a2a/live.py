"""Tasks while they run: their event log, the writer each run attempt feeds, and readers.

Every task runs as a host background run, so it is recorded before the caller hears of
it and survives a crash (the host re-runs it). The worker streams the run's updates into
a :class:`TaskWriter`; each update's events are stored before anyone sees them, then the
readers in this process are woken (readers of a task run by another replica poll).
Events are numbered per task from 1; the stored task notes the number of the last event
it already reflects, so a resubscriber gets the task and then exactly the events after
it. A run that runs again continues the numbers.

The task's state is :mod:`tasks`' to decide; this module moves values between the run,
the store and the readers, and schedules push notifications on status changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import attrs

from agenthost.backends.targets import StreamUpdate
from agenthost.channels.a2a import codec, tasks
from agenthost.channels.a2a.pushes import Pushes
from agenthost.channels.a2a.records import EVENT, TASK, TaskRecords, event_key, task_key
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.types import RunStatus
from agenthost.stores.base import ChannelRecord

_READ_BATCH = 500
TASK_ATTRIBUTE = "a2a_task_id"  # the request attribute naming the run's task
_FINAL_STATES = {
    RunStatus.COMPLETED: tasks.COMPLETED,
    RunStatus.FAILED: tasks.FAILED,
    RunStatus.CANCELLED: tasks.CANCELED,
}

Emit = Callable[[Any], Awaitable[None]]  # one v1.0 StreamResponse or Task


class LiveTasks:
    """Stored tasks and their events, with wake-ups and one lock per task in this process."""

    def __init__(self, records: TaskRecords, pushes: Pushes, *, poll_seconds: float) -> None:
        self.records = records
        self.pushes = pushes
        self._poll_seconds = poll_seconds
        self._wakeups: dict[str, anyio.Event] = {}
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        self.writers: dict[str, TaskWriter] = {}

    # --- writing ----------------------------------------------------------------------

    def lock(self, task_id: str) -> _TaskLock:
        return _TaskLock(self, task_id)

    async def load(self, caller: str, task_id: str) -> tuple[Any, ChannelRecord] | None:
        record = await self.records.task(caller, task_id)
        if record is None:
            return None
        return codec.task_from_dict(record.value["task"]), record

    async def save(
        self,
        caller: str,
        task: Any,
        *,
        base: Mapping[str, Any],
        owner: str | None,
        events: Sequence[Any] = (),
        first_number: int = 1,
        reflects: int | None = None,
        final: bool = False,
        extra: Sequence[ChannelRecord] = (),
    ) -> None:
        """Store ``task`` and ``events`` (numbered from ``first_number``) in one write.

        ``reflects``: the number of the last event the stored task already includes
        (default: the last of ``events``, or what ``base`` said).
        """
        if reflects is None:
            reflects = first_number + len(events) - 1 if events else int(base.get("number", 0))
        value = {**base, "task": codec.to_dict(task), "number": reflects, "caller": caller}
        record = self.records.record(
            TASK,
            task_key(caller, task.id),
            value,
            owner,
            expires_at=self.records.expiry() if final else None,
        )
        await self.append_events(
            task.id, events, first_number, owner, with_records=[record, *extra]
        )

    async def append_events(
        self,
        task_id: str,
        events: Sequence[Any],
        first_number: int,
        owner: str | None,
        *,
        with_records: Sequence[ChannelRecord] = (),
    ) -> int:
        """Store ``events`` numbered from ``first_number`` (and ``with_records``) in one
        write, wake this process's readers; answer the next free number."""
        expires = self.records.expiry()
        batch = [
            self.records.record(
                EVENT,
                event_key(task_id, first_number + offset),
                {"event": codec.to_dict(event)},
                owner,
                expires_at=expires,
            )
            for offset, event in enumerate(events)
        ]
        await self.records.put([*batch, *with_records])
        self.wake(task_id)
        return first_number + len(events)

    def wake(self, task_id: str) -> None:
        event = self._wakeups.pop(task_id, None)
        if event is not None:
            event.set()

    def _wakeup(self, task_id: str) -> anyio.Event:
        event = self._wakeups.get(task_id)
        if event is None:
            event = self._wakeups[task_id] = anyio.Event()
        return event

    # --- reading ----------------------------------------------------------------------

    async def until_final(self, caller: str, task_id: str) -> Any:
        """The task once it reached a terminal state (or ``None`` if it vanished)."""
        while True:
            wakeup = self._wakeup(task_id)
            loaded = await self.load(caller, task_id)
            if loaded is None:
                return None
            task, _ = loaded
            if codec.is_terminal(task):
                return task
            with anyio.move_on_after(self._poll_seconds):
                await wakeup.wait()

    async def follow(self, caller: str, task_id: str, after: int, emit: Emit) -> None:
        """Emit the stored events past ``after`` as they come, until the final status."""
        cursor = after
        draining = False
        while True:
            # Taken before reading, so an event stored between the read and the wait wakes.
            wakeup = self._wakeup(task_id)
            batch = await self.records.events_after(task_id, cursor, _READ_BATCH)
            for number, value in batch:
                event = codec.stream_response_from_dict(value)
                await emit(event)
                cursor = number
                if event.HasField("status_update") and (
                    event.status_update.status.state in codec.TERMINAL_STATES
                ):
                    return
            if len(batch) == _READ_BATCH:
                continue
            if draining:
                return
            loaded = await self.load(caller, task_id)
            if loaded is None or codec.is_terminal(loaded[0]):
                draining = True  # one more read: events stored just before it finished
                continue
            with anyio.move_on_after(self._poll_seconds):
                await wakeup.wait()

    # --- finishing ----------------------------------------------------------------------

    async def finish(self, run: RunRecord) -> None:
        """Record the end of a task's background run (completed, failed or cancelled)."""
        task_id = run.request.attributes.get(TASK_ATTRIBUTE)
        if not isinstance(task_id, str):
            return
        caller = run.request.identity.native_id
        state = _FINAL_STATES.get(run.status)
        if state is None:
            return
        async with self.lock(task_id):
            writer = self.writers.pop(task_id, None)
            if writer is not None:
                writer.closed = True
            loaded = await self.load(caller, task_id)
            if loaded is None or codec.is_terminal(loaded[0]):
                return
            task, record = loaded
            text = str((run.result or {}).get("text") or "")
            now = self.records.now()
            done = tasks.finished(task, state, reply_text=text, now=now)
            events = []
            streamed = "".join(writer.streamed) if writer is not None else None
            if state == tasks.COMPLETED and streamed != text:
                # Not streamed (or only in part, by an attempt that died): the whole reply.
                events.append(tasks.whole_reply_event(done, text))
            events.append(tasks.status_event(done))
            first = (
                writer.next_number
                if writer is not None and writer.next_number is not None
                else 1 + await self.records.last_event_number(task_id)
            )
            configs = await self.records.push_configs(task_id)
            expires = self.records.expiry()
            kept = [attrs.evolve(c, expires_at=expires) for c in configs]
            await self.save(
                caller,
                done,
                base={**record.value, "token": run.token},
                owner=run.isolation_key,
                events=events,
                first_number=first,
                final=True,
                extra=kept,
            )
            await self.pushes.notify(
                done, caller=caller, owner=run.isolation_key, number=first + len(events) - 1
            )


class _TaskLock:
    """``async with live.lock(task_id)``: one writer of a task at a time in this process."""

    def __init__(self, live: LiveTasks, task_id: str) -> None:
        self._live = live
        self._task_id = task_id

    async def __aenter__(self) -> None:
        lock, users = self._live._locks.get(self._task_id, (anyio.Lock(), 0))
        self._live._locks[self._task_id] = (lock, users + 1)
        await lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        lock, users = self._live._locks[self._task_id]
        lock.release()
        if users <= 1:
            del self._live._locks[self._task_id]
        else:
            self._live._locks[self._task_id] = (lock, users - 1)


class TaskWriter:
    """The writer of one attempt of one task's run: its updates become stored events."""

    def __init__(
        self, live: LiveTasks, *, caller: str, task_id: str, token: str, owner: str
    ) -> None:
        self._live = live
        self.caller = caller
        self.task_id = task_id
        self.token = token
        self.owner = owner
        self.streamed: list[str] = []
        self.next_number: int | None = None
        self.closed = False

    async def on_update(self, update: StreamUpdate) -> None:
        if not update.text:
            return  # tool calls and other non-text updates have no A2A rendering here
        async with self._live.lock(self.task_id):
            if self.closed:
                return
            if self.next_number is None:
                await self._start(update.text)
                return
            self.next_number = await self._live.append_events(
                self.task_id,
                [_chunk(self.task_id, self._context_id, update.text, append=True)],
                self.next_number,
                self.owner,
            )
            self.streamed.append(update.text)

    async def _start(self, text: str) -> None:
        loaded = await self._live.load(self.caller, self.task_id)
        if loaded is None or codec.is_terminal(loaded[0]):
            self.closed = True  # cancelled or expired meanwhile: nothing to stream into
            return
        task, record = loaded
        self._context_id = task.context_id
        first = 1 + await self._live.records.last_event_number(self.task_id)
        moved = tasks.working(task, self._live.records.now())
        events = []
        if moved is not task:
            events.append(tasks.status_event(moved))
        # A new attempt replaces whatever an earlier one streamed.
        events.append(tasks.chunk_event(moved, text, append=False))
        base = {**record.value, "token": self.token}
        await self._live.save(
            self.caller,
            moved,
            base=base,
            owner=self.owner,
            events=events,
            first_number=first,
            # The stored task is as of its status event: the chunk comes after it.
            reflects=first if moved is not task else first - 1,
        )
        if moved is not task:
            await self._live.pushes.notify(
                moved, caller=self.caller, owner=self.owner, number=first
            )
        self.next_number = first + len(events)
        self.streamed.append(text)

    _context_id: str = ""


def _chunk(task_id: str, context_id: str, text: str, *, append: bool) -> Any:
    shell = codec.task_from_dict({"id": task_id, "contextId": context_id})
    return tasks.chunk_event(shell, text, append=append)
