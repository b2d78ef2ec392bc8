"""Tasks while they run: their event log, the writer each run attempt feeds, and readers.

Every task runs as a host background run, so it is recorded before the caller hears of
it and survives a crash (the host re-runs it). The worker streams the run's updates into
a :class:`TaskWriter`, which stores them as events (the first at once, later ones in
batches by a flush task) before anyone sees them, then wakes the readers in this
process; readers of a task run by another replica poll the store. Events are numbered
per task from 1; the stored task notes the number of the last event it already
reflects, so a resubscriber gets the task and then exactly the events after it. A run
that runs again continues the numbers. One process writes a task's events at a time
(the one holding its run), with the end written under the same per-task lock.

While a task has readers here, the events this process stores for it are also kept in
memory, so streaming to a reader costs no store reads. A run that ends without telling
the channel (the host gave up on it after a crash) is ended by the next read
(:meth:`LiveTasks.settled`).

The task's state is :mod:`tasks`' to decide; this module moves values between the run,
the store and the readers, and schedules push notifications on status changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import anyio
import attrs
from a2a.types import a2a_pb2 as pb

from agenthost.backends.targets import StreamUpdate
from agenthost.channels.a2a import codec, tasks
from agenthost.channels.a2a.pushes import Pushes
from agenthost.channels.a2a.records import (
    EVENT,
    TASK,
    WAITING,
    TaskRecords,
    event_key,
    task_key,
    waiting_key,
)
from agenthost.recent import RecentMap
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.types import ContinuationToken, RunStatus
from agenthost.stores.base import ChannelRecord

_READ_BATCH = 500
_RECENT_EVENTS = 1000
_PARSED_TASKS = 256  # tasks kept parsed (see ``LiveTasks.load``)
TASK_ATTRIBUTE = "a2a_task_id"  # the request attribute naming the run's task
_FINAL_STATES = {
    RunStatus.COMPLETED: tasks.COMPLETED,
    RunStatus.FAILED: tasks.FAILED,
    RunStatus.CANCELLED: tasks.CANCELED,
}

Emit = Callable[[Any], Awaitable[None]]  # one v1.0 StreamResponse or Task


class StartTask(Protocol):
    def __call__(self, fn: Callable[[], Awaitable[None]], *, name: str) -> None: ...


class LiveTasks:
    """Stored tasks and their events, with wake-ups and one lock per task in this process."""

    def __init__(
        self,
        records: TaskRecords,
        pushes: Pushes,
        *,
        runs: Callable[[str], Awaitable[ContinuationToken | None]],
        poll_seconds: float,
    ) -> None:
        self.records = records
        self._runs = runs
        self.pushes = pushes
        self._poll_seconds = poll_seconds
        self._wakeups: dict[str, anyio.Event] = {}
        self._followers: dict[str, int] = {}
        self._recent: dict[str, list[tuple[int, Any]]] = {}
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        self.writers: dict[str, TaskWriter] = {}
        # Task id -> (its stored ProtoJSON, the task it parses to), as last read or written.
        self._parsed: RecentMap[str, tuple[Mapping[str, Any], Any]] = RecentMap(_PARSED_TASKS)

    # --- writing ----------------------------------------------------------------------

    def lock(self, task_id: str) -> _TaskLock:
        return _TaskLock(self, task_id)

    async def load(self, caller: str, task_id: str) -> tuple[Any, ChannelRecord] | None:
        record = await self.records.task(caller, task_id)
        if record is None:
            return None
        return self._task_of(record.value["task"]), record

    def _task_of(self, value: Mapping[str, Any]) -> Any:
        """The task whose ProtoJSON is ``value``. A task is read back several times a turn
        (its run, its end, its readers), and protobuf's pure-Python JSON parser costs far
        more than comparing the value with the one this process last read or wrote: when
        they are equal, a copy of the task kept then is the same task. A value another
        replica wrote since differs, and is parsed."""
        task_id = value.get("id")
        kept = self._parsed.get(task_id) if isinstance(task_id, str) else None
        if kept is not None and kept[0] == value:
            task = pb.Task()
            task.CopyFrom(kept[1])
            return task
        task = codec.task_from_dict(value)
        self._keep(value, task)
        return task

    def _keep(self, value: Mapping[str, Any], task: Any) -> None:
        kept = pb.Task()
        kept.CopyFrom(task)  # the caller's own may change; the kept one never does
        self._parsed.put(kept.id, (value, kept))

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
        record = self.task_record(caller, task, {**base, "number": reflects}, owner, final=final)
        await self.append_events(
            task.id, events, first_number, owner, with_records=[record, *extra]
        )

    def task_record(
        self, caller: str, task: Any, base: Mapping[str, Any], owner: str | None, *, final: bool
    ) -> ChannelRecord:
        """The stored form of ``task``; ``base`` carries its bookkeeping (``token``,
        ``number``, ``pushes``: whether it has push configs; ``answered``: the token of the run
        whose question the current turn answers). A finished or waiting task expires."""
        value = codec.to_dict(task)
        self._keep(value, task)
        return self.records.record(
            TASK,
            task_key(caller, task.id),
            {**base, "task": value},
            owner,
            expires_at=self.records.expiry() if final else None,
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
        values = [codec.to_dict(event) for event in events]
        return await self.append_values(
            task_id, values, first_number, owner, with_records=with_records
        )

    async def append_values(
        self,
        task_id: str,
        values: Sequence[dict[str, Any]],
        first_number: int,
        owner: str | None,
        *,
        with_records: Sequence[ChannelRecord] = (),
    ) -> int:
        """:meth:`append_events` for events already in their stored form (ProtoJSON)."""
        expires = self.records.expiry()
        batch = [
            self.records.record(
                EVENT,
                event_key(task_id, first_number + offset),
                {"event": value},
                owner,
                expires_at=expires,
            )
            for offset, value in enumerate(values)
        ]
        await self.records.put([*batch, *with_records])
        self._remember(task_id, first_number, values)
        self.wake(task_id)
        return first_number + len(values)

    async def resume(
        self,
        caller: str,
        task: Any,
        *,
        base: Mapping[str, Any],
        owner: str | None,
        number: int,
        mark: ChannelRecord,
        extra: Sequence[ChannelRecord] = (),
    ) -> bool:
        """Store ``task``, moved back to ``working`` by the caller's answer, and its status
        event (number ``number``) in one write with ``mark``, the answer's de-duplication
        record, unless that exists already; ``True`` if this call stored them."""
        value = codec.to_dict(tasks.status_event(task))
        event = self.records.record(
            EVENT, event_key(task.id, number), {"event": value}, owner,
            expires_at=self.records.expiry(),
        )  # fmt: skip
        record = self.task_record(caller, task, {**base, "number": number}, owner, final=False)
        if not await self.records.insert(mark, companions=[record, event, *extra]):
            return False
        self._remember(task.id, number, [value])
        self.wake(task.id)
        return True

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
        """The task once it reached a terminal state (or ``None`` if it vanished).

        Within this process the final status event wakes it; the store is read again
        only then, or after ``poll_seconds`` (a task run by another replica).
        """
        with self._following(task_id):
            cursor = 0
            check_store = True
            while True:
                wakeup = self._wakeup(task_id)
                recent = self._recent_after(task_id, cursor)
                if recent:
                    cursor = recent[-1][0]
                    check_store = check_store or any(_is_final(value) for _, value in recent)
                if check_store:
                    loaded = await self.settled(caller, task_id)
                    if loaded is None:
                        return None
                    if codec.is_settled(loaded[0]):
                        return loaded[0]
                check_store = not await _woken(wakeup, self._poll_seconds)

    async def follow(self, caller: str, task_id: str, after: int, emit: Emit) -> None:
        """Emit the stored events past ``after`` as they come, until the final status.

        Events this process stores while it follows are taken from memory; the store is
        read first, when memory misses events, and after each ``poll_seconds`` without a
        wake-up (a task run by another replica).
        """
        with self._following(task_id):
            cursor = after
            check_store = True
            draining = False
            while True:
                # Taken before reading, so an event stored between the read and the wait wakes.
                wakeup = self._wakeup(task_id)
                recent = None if check_store else self._recent_after(task_id, cursor)
                if recent is None:
                    batch = await self.records.events_after(task_id, cursor, _READ_BATCH)
                else:
                    batch = recent
                for number, value in batch:
                    await emit(codec.stream_response_from_dict(value))
                    cursor = number
                    if _is_final(value):
                        return
                if recent is None:
                    if len(batch) == _READ_BATCH:
                        continue
                    if draining:
                        return
                    loaded = await self.settled(caller, task_id)
                    if loaded is None or codec.is_settled(loaded[0]):
                        draining = True  # one more read: events stored just before the end
                        continue
                check_store = not await _woken(wakeup, self._poll_seconds)

    @contextlib.contextmanager
    def _following(self, task_id: str) -> Iterator[None]:
        # While a task has readers here, the events this process stores for it are kept
        # in memory too (the last _RECENT_EVENTS of them), so readers need not read them back.
        self._followers[task_id] = self._followers.get(task_id, 0) + 1
        self._recent.setdefault(task_id, [])
        try:
            yield
        finally:
            left = self._followers.pop(task_id) - 1
            if left:
                self._followers[task_id] = left
            else:
                self._recent.pop(task_id, None)
                self._wakeups.pop(task_id, None)

    def _recent_after(self, task_id: str, cursor: int) -> list[tuple[int, Any]] | None:
        """The remembered events past ``cursor``, or ``None`` if memory misses some."""
        recent = self._recent.get(task_id)
        if not recent:
            return []
        if recent[0][0] > cursor + 1:
            return None
        return [(number, value) for number, value in recent if number > cursor]

    def _remember(self, task_id: str, first_number: int, values: Sequence[Any]) -> None:
        recent = self._recent.get(task_id)
        if recent is None:
            return
        recent.extend((first_number + offset, value) for offset, value in enumerate(values))
        del recent[: max(len(recent) - _RECENT_EVENTS, 0)]

    # --- finishing ----------------------------------------------------------------------

    async def finish(self, run: RunRecord) -> None:
        """Record the end of a task's background run (completed, failed or cancelled)."""
        task_id = run.request.attributes.get(TASK_ATTRIBUTE)
        if isinstance(task_id, str):
            await self.finish_task(
                run.request.identity.native_id,
                task_id,
                run.to_token(),
            )

    async def settled(self, caller: str, task_id: str) -> tuple[Any, ChannelRecord] | None:
        """The task, ended first if its run ended without telling this channel.

        A run the host gave up on (recovered after a crash with no attempts left) or
        whose record expired never reaches ``background_finished``; its task would say
        ``working`` forever. Reads that find an unfinished task ask the host about its run.
        """
        loaded = await self.load(caller, task_id)
        if loaded is None or codec.is_settled(loaded[0]):
            return loaded  # ended, or its run ended with a question: nothing runs for it
        token = loaded[1].value.get("token")
        if not isinstance(token, str):
            return loaded  # its run is being recorded right now
        run = await self._runs(token)
        if run is not None and not run.status.is_final:
            return loaded
        if run is None:
            # The run is gone: the task failed, as far as anyone can tell.
            run = ContinuationToken(
                token=token,
                status=RunStatus.FAILED,
                isolation_key=loaded[1].owner or "",
                created_at=self.records.now(),
            )
        await self.finish_task(caller, task_id, run)
        return await self.load(caller, task_id)

    async def finish_task(self, caller: str, task_id: str, run: ContinuationToken) -> None:
        """End ``task_id``'s turn as its run ended (``run``: the run's public face): the
        task ends, or waits for input when a workflow's run ended with open questions."""
        state = _FINAL_STATES.get(run.status)
        if state is None:
            return
        async with self.lock(task_id):
            loaded = await self.load(caller, task_id)
            if loaded is None or codec.is_terminal(loaded[0]):
                return
            task, record = loaded
            if run.token == record.value.get("answered") or record.value.get("token") not in (
                None,
                run.token,
            ):
                return  # a late word from an earlier turn's run: the task has moved on
            waiting = task.status.state in codec.INTERRUPTED_STATES
            if waiting and state != tasks.CANCELED:
                return  # that turn was recorded already
            writer = self.writers.pop(task_id, None)
            if writer is not None:
                writer.closed = True
            text = str((run.result or {}).get("text") or "")
            owner = run.isolation_key or record.owner
            now = self.records.now()
            questions = _open_questions(run.result)
            again = None
            if state == tasks.FAILED and record.value.get("answered"):
                # The answer's turn failed and saved nothing: the question is still open.
                again = tasks.asked_again(task, now)
            if again is not None:
                done = again
            elif state == tasks.COMPLETED and questions:
                done = tasks.asking(task, text, questions, now=now)
            else:
                done = tasks.finished(task, state, reply_text=text, now=now)
            events = []
            if writer is not None and writer.next_number is not None:
                # Chunks the flush task has not stored yet go first, in order.
                events += [
                    tasks.chunk(task_id, task.context_id, piece, append=True)
                    for piece in writer.take_pending()
                ]
            streamed = "".join(writer.streamed) if writer is not None else None
            if done.status.state == tasks.COMPLETED and streamed != text:
                # Not streamed (or only in part, by an attempt that died): the whole reply.
                events.append(tasks.whole_reply_event(done, text))
            events.append(tasks.status_event(done))
            first = (
                writer.next_number
                if writer is not None and writer.next_number is not None
                else 1 + await self.records.last_event_number(task_id)
            )
            has_pushes = bool(record.value.get("pushes"))
            configs = await self.records.push_configs(task_id) if has_pushes else []
            expires = self.records.expiry()
            kept = [attrs.evolve(c, expires_at=expires) for c in configs]
            if done.status.state in codec.INTERRUPTED_STATES:
                # The context's session now waits for this task's answer.
                kept.append(
                    self.records.record(
                        WAITING, waiting_key(caller, done.context_id), {"task_id": task_id},
                        owner, expires_at=expires,
                    )
                )  # fmt: skip
            await self.save(
                caller,
                done,
                base={**record.value, "token": run.token},
                owner=owner,
                events=events,
                first_number=first,
                final=True,
                extra=kept,
            )
            if configs:
                await self.pushes.notify(
                    done,
                    caller=caller,
                    owner=owner,
                    number=first + len(events) - 1,
                    configs=configs,
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
    """The writer of one attempt of one task's run: its updates become stored events.

    The first update is stored before ``on_update`` returns (it moves the task to
    ``working``). Later chunks are queued and stored by a flush task in the host's task
    group, everything queued in one write, so a fast target is not held to one store
    round trip per chunk; :meth:`take_pending` hands what is still queued to the run's
    end, which stores it before the final status.
    """

    def __init__(
        self,
        live: LiveTasks,
        *,
        caller: str,
        task_id: str,
        token: str,
        owner: str,
        start_task: StartTask,
    ) -> None:
        self._live = live
        self.caller = caller
        self.task_id = task_id
        self.token = token
        self.owner = owner
        self.streamed: list[str] = []
        self.next_number: int | None = None
        self.closed = False
        self._pending: list[str] = []
        self._flushing = False
        self._start_task = start_task

    async def on_update(self, update: StreamUpdate) -> None:
        if not update.text or self.closed:
            return  # tool calls and other non-text updates have no A2A rendering here
        if self.next_number is not None:
            self._pending.append(update.text)
            if not self._flushing:
                self._flushing = True
                self._start_task(self._flush, name=f"a2a flush {self.task_id}")
            return
        async with self._live.lock(self.task_id):
            if not self.closed:
                await self._start(update.text)

    async def _flush(self) -> None:
        try:
            while True:
                async with self._live.lock(self.task_id):
                    batch = self.take_pending()
                    if not batch or self.closed or self.next_number is None:
                        return
                    values = [
                        tasks.chunk_value(self.task_id, self._context_id, text, append=True)
                        for text in batch
                    ]
                    self.next_number = await self._live.append_values(
                        self.task_id, values, self.next_number, self.owner
                    )
        finally:
            self._flushing = False

    def take_pending(self) -> list[str]:
        """The chunks queued and not stored yet (now counted as streamed)."""
        batch, self._pending = self._pending, []
        self.streamed += batch
        return batch

    async def _start(self, text: str) -> None:
        loaded = await self._live.load(self.caller, self.task_id)
        if loaded is None or codec.is_terminal(loaded[0]):
            self.closed = True  # cancelled or expired meanwhile: nothing to stream into
            return
        task, record = loaded
        self._context_id = task.context_id
        # A submitted task has no events yet (its first stored event moves it to working);
        # a run that runs again continues after the last one stored.
        first = 1
        if task.status.state != pb.TASK_STATE_SUBMITTED:
            first += await self._live.records.last_event_number(self.task_id)
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
        if moved is not task and record.value.get("pushes"):
            await self._live.pushes.notify(
                moved, caller=self.caller, owner=self.owner, number=first
            )
        self.next_number = first + len(events)
        self.streamed.append(text)

    _context_id: str = ""


def _is_final(value: Mapping[str, Any]) -> bool:
    """A stored event (ProtoJSON) is a status update to a terminal or interrupted state
    (the last event of a turn)."""
    state = value.get("statusUpdate", {}).get("status", {}).get("state")
    return state in _SETTLED_STATE_NAMES


_SETTLED_STATE_NAMES = frozenset(
    pb.TaskState.Name(state) for state in codec.TERMINAL_STATES | codec.INTERRUPTED_STATES
)


def _open_questions(result: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The open input requests of a workflow turn's stored result (``WorkflowTurn``'s JSON
    form), as the data part of the question; empty for any other result."""
    output = (result or {}).get("output")
    requests = output.get("input_requests") if isinstance(output, Mapping) else None
    if not isinstance(requests, list):
        return []
    found = []
    for request in requests:
        if isinstance(request, Mapping) and isinstance(request.get("request_id"), str):
            entry = {"requestId": request["request_id"], "text": str(request.get("text") or "")}
            if request.get("data") is not None:
                entry["data"] = request["data"]
            found.append(entry)
    return found


async def _woken(wakeup: anyio.Event, seconds: float) -> bool:
    """Wait for ``wakeup`` at most ``seconds``; ``True`` if it was set."""
    with anyio.move_on_after(seconds):
        await wakeup.wait()
        return True
    return False
