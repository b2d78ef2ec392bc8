"""The durable inbox the push-style channels share: record first, acknowledge, then handle.

Telegram updates, Discord interactions and Bot Framework activities arrive the same way:
the platform delivers at least once and waits for an acknowledgement, and the turn that
answers may take far longer than the platform waits. Each channel's own ``inbox`` module
decides what an arrival's keys and stored form are; this one keeps the rules they share.

Rules (design §8):

1. An arrival is recorded before it is acknowledged. One ``insert_channel_records`` call
   inserts each arrival's de-duplication mark (kind ``seen``) only where it is absent and,
   only then, the arrival's record (kind ``inbox``) as the mark's companion, and writes the
   caller's ``put`` records with them. So of two deliveries of one arrival (a redelivery,
   or two replicas sharing the store) exactly one is recorded and handled, and a crash
   after the acknowledgement loses nothing: the next start queues what the inbox holds.
   An arrival without a mark (nothing to de-duplicate on) is recorded unconditionally.
2. Marks expire after the channel's de-duplication window.
3. Arrivals are handled in arrival order within a lane (a chat, a conversation), one at a
   time; lanes run concurrently up to a bound. At most ``max_pending`` arrivals wait in
   this process (the channel then refuses, so the platform retries): nothing queues
   without bound.
4. A handled arrival's record is deleted, and so is one whose handling raised (logged by
   type: an error's text may quote the user), so one poisonous arrival cannot block its
   lane or come back at every start. One interrupted by shutdown stays for the next start.
5. Within this process an arrival being recorded, queued or handled is never accepted
   twice, even when the platform delivers it again concurrently.
6. Each record names the process that recorded it (``ChannelRecord.owner``). Recovery, at
   start and then at each renewal of this process's lease on its name (every third of
   ``owner_lease_seconds``), takes over the records of processes that died or stopped, by
   the rules of ``agenthost/sansio_core/inbox_recovery.py``; this module only performs
   them: it lists the records' keys and owners (no values: every replica sweeps every
   few seconds), takes and gives up the owners' leases and applies the compare-and-set.
7. A stop (the channel's shutdown) starts nothing new, lets the arrivals being handled
   finish (the host bounds the wait by its shutdown grace), then gives up the lease, so
   another replica takes over what stayed queued at its next recovery.

Inbox keys sort in arrival order (the channels zero-pad ids or arrival times), so
recovery pages through them, and takes them, in the order they came.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.abc
import attrs

from agenthost.backends.channel import HostServices
from agenthost.sansio_core.inbox_recovery import InboxEntry, may_move, plan_recovery, to_take
from agenthost.stores.base import ChannelRecord

INBOX = "inbox"
SEEN = "seen"

# Waits between attempts to delete a handled arrival's record while the store stalls.
_CLEAR_WAITS = (0.5, 1.0, 2.0)

# How long a process's claim on its inbox records lasts unless renewed: a dead replica's
# arrivals wait at most about this long (plus one recovery period) for another replica.
DEFAULT_OWNER_LEASE_SECONDS = 15.0


def owner_lease_name(channel: str, owner: str) -> str:
    """The store singleton a live process holds on its inbox records of ``channel``."""
    return f"inbox:{channel}:{owner}"


@attrs.frozen
class Arrival:
    """One arrival as the inbox records and queues it."""

    key: str  # the inbox record's key; keys sort in arrival order
    value: Mapping[str, Any]  # what is stored under it (enough to handle it after a crash)
    lane: str  # arrivals of one lane are handled one at a time, in order
    item: Any  # what the handler gets (parsed once, or rebuilt from ``value`` on recovery)
    mark: str | None = None  # the de-duplication mark's key; None: not de-duplicated


Handler = Callable[[Any], Awaitable[None]]
Restore = Callable[[ChannelRecord], "Arrival | None"]


class DurableInbox:
    """Records arrivals, queues them by lane and runs the handler on each (rules above).

    ``label`` names the channel's arrivals in logs ("telegram update"); nothing else of an
    arrival but its inbox key is logged. ``restore`` rebuilds an arrival from its stored
    record on recovery (``None`` skips a record it cannot read, which then stays in the
    store for an operator to look at).
    """

    def __init__(
        self,
        host: HostServices,
        *,
        channel: str,
        label: str,
        handle: Handler,
        restore: Restore,
        dedupe_seconds: float,
        max_concurrent_lanes: int,
        max_pending: int | None = None,
        owner_lease_seconds: float = DEFAULT_OWNER_LEASE_SECONDS,
    ) -> None:
        self._host = host
        self._channel = channel
        self._label = label
        self._handle = handle
        self._restore = restore
        self._owner = uuid.uuid4().hex
        self._lease_seconds = owner_lease_seconds
        self._lease_lock = anyio.Lock()
        self._leased = False  # the owner lease was asked for at least once (rule 6)
        self._released = False  # given up for good (rule 7)
        self._stopping = False
        self._dedupe_seconds = dedupe_seconds
        self._max_pending = max_pending
        self._log = logging.getLogger(f"agenthost.channels.{channel}")
        self._limiter = anyio.CapacityLimiter(max_concurrent_lanes)
        self._queues: dict[str, deque[Arrival]] = {}
        self._active: set[str] = set()
        self._known: set[str] = set()  # keys being recorded, queued or handled here
        self._tasks: anyio.abc.TaskGroup | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._quiet = anyio.Event()  # no lane is handling an arrival (rule 7)
        self._quiet.set()

    @property
    def owner(self) -> str:
        """The name this process's records carry (rule 6)."""
        return self._owner

    @property
    def full(self) -> bool:
        """Whether ``max_pending`` arrivals already wait in this process (rule 3)."""
        return self._max_pending is not None and len(self._known) >= self._max_pending

    def knows(self, key: str) -> bool:
        """Whether this process is recording, queueing or handling ``key`` (rule 5)."""
        return key in self._known

    # --- recording ---------------------------------------------------------------------

    async def record(
        self, arrivals: Sequence[Arrival], *, put: Sequence[ChannelRecord] = ()
    ) -> list[Arrival]:
        """Record the arrivals not seen before (and write ``put``), then queue them.

        Returns the new ones, in order. Raises what the store raises: the caller must then
        not acknowledge the arrivals.
        """
        if not self._leased:
            await self._renew_lease()
        fresh: list[Arrival] = []
        keys: set[str] = set()
        for arrival in arrivals:
            if arrival.key not in self._known and arrival.key not in keys:
                keys.add(arrival.key)
                fresh.append(arrival)
        self._known.update(keys)
        try:
            recorded = await self._insert(fresh, put)
        except BaseException:
            self._known.difference_update(keys)
            raise
        self._known.difference_update(keys - {a.key for a in recorded})
        for arrival in recorded:
            self._enqueue(arrival)
        return recorded

    async def _insert(self, fresh: list[Arrival], put: Sequence[ChannelRecord]) -> list[Arrival]:
        now = self._host.now()
        marks: list[ChannelRecord] = []
        companions: dict[str, list[ChannelRecord]] = {}
        always: list[ChannelRecord] = []
        for arrival in fresh:
            record = ChannelRecord(
                self._channel, INBOX, arrival.key, arrival.value, owner=self._owner, created_at=now
            )
            if arrival.mark is None:
                always.append(record)
                continue
            expires = now + self._dedupe_seconds
            marks.append(
                ChannelRecord(
                    self._channel, SEEN, arrival.mark, {}, created_at=now, expires_at=expires
                )
            )
            companions[arrival.mark] = [record]
        always.extend(put)
        if not marks and not always:
            return []
        inserted = await self._host.store.insert_channel_records(
            marks, companions=companions, put=always
        )
        return [a for a in fresh if a.mark is None or a.mark in inserted]

    async def recover(self, page: int = 500) -> int:
        """Queue what the inbox holds and no live process owns (rule 6); returns how many.

        The channel calls it at start (after a crash or a stop); :meth:`run` calls it again
        at each renewal of the lease, for what other replicas left when they died.
        """
        if self._stopping or not await self._renew_lease():
            return 0
        entries: list[InboxEntry] = []
        after: str | None = None
        while True:
            # Keys and owners only: the values of what is taken are read by the take.
            owners = await self._host.store.list_channel_record_owners(
                self._channel, INBOX, after=after, limit=page
            )
            entries += [InboxEntry(key, owner) for key, owner in owners]
            if len(owners) < page:
                break
            after = owners[-1][0]
        plan = plan_recovery(entries, me=self._owner, known=self._known)
        if not plan.candidates:
            return 0
        store, now = self._host.store, self._host.now()
        gone: set[str] = set()
        recovered = 0
        try:
            for owner in plan.leases_to_try:
                # Taking it fails while the owner lives (it renews it) or while another
                # replica takes over.
                if await store.acquire_singleton(
                    owner_lease_name(self._channel, owner),
                    self._owner,
                    now=now,
                    ttl=self._lease_seconds,
                ):
                    gone.add(owner)
            for entry in to_take(plan.candidates, gone=gone, known=self._known):
                moved = await store.change_channel_record(
                    self._channel, INBOX, entry.key, partial(_move, entry, self._owner)
                )
                arrival = self._restore(moved[0]) if moved else None
                if arrival is None:
                    continue  # handled meanwhile, taken by another replica, or unreadable
                self._known.add(entry.key)
                self._enqueue(arrival)
                recovered += 1
        finally:
            with anyio.CancelScope(shield=True):
                for owner in sorted(gone):
                    await store.release_singleton(
                        owner_lease_name(self._channel, owner), self._owner
                    )
        if recovered:
            self._log.info("%s inbox recovered", self._label, extra={"recovered": recovered})
        return recovered

    async def _renew_lease(self) -> bool:
        """Take or renew this process's lease on its records; whether it holds it."""
        async with self._lease_lock:
            if self._released:
                return False
            held = await self._host.store.acquire_singleton(
                owner_lease_name(self._channel, self._owner),
                self._owner,
                now=self._host.now(),
                ttl=self._lease_seconds,
            )
            self._leased = True
        if not held:
            # Another replica found the lease lapsed (this process was frozen or cut off
            # from the store for a whole lease) and is taking its records: what this
            # process still handles may be handled there too, at least once.
            self._log.warning("%s inbox lease was lost", self._label)
        return held

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its time, and recover (which renews it) then."""
        while not self._stopping:
            await anyio.sleep(self._lease_seconds / 3)
            try:
                await self.recover()
            except Exception as error:  # a store outage: try again at the next beat
                self._log.warning(
                    "%s inbox lease not renewed",
                    self._label,
                    extra={"error_type": type(error).__name__},
                )

    async def stop(self) -> None:
        """Start no more arrivals, wait for those being handled, give up the lease (rule 7).

        What stayed queued keeps its record: another replica's recovery, or this host's
        next start, takes it. The host bounds the wait by cancelling it."""
        self._stopping = True
        try:
            await self._quiet.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_lease()

    async def _release_lease(self) -> None:
        async with self._lease_lock:
            if self._released or not self._leased:
                return
            self._released = True  # never renewed again: this inbox has stopped
            try:
                await self._host.store.release_singleton(
                    owner_lease_name(self._channel, self._owner), self._owner
                )
            except Exception as error:  # it lapses on its own
                self._log.warning(
                    "%s inbox lease not released",
                    self._label,
                    extra={"error_type": type(error).__name__},
                )

    # --- handling ----------------------------------------------------------------------

    async def run(self) -> None:
        """Handle queued arrivals until cancelled (the host's lifespan task)."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                for lane in list(self._queues):
                    self._start(lane)
                try:
                    await self._keep_lease()
                finally:
                    self._tasks = None
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_lease()

    async def wait_idle(self) -> None:
        """Until nothing is queued or being handled (for tests and benchmarks)."""
        await self._idle.wait()

    def _enqueue(self, arrival: Arrival) -> None:
        self._queues.setdefault(arrival.lane, deque()).append(arrival)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._start(arrival.lane)

    def _start(self, lane: str) -> None:
        if self._tasks is not None and lane not in self._active and not self._stopping:
            self._active.add(lane)
            if self._quiet.is_set():
                self._quiet = anyio.Event()
            self._tasks.start_soon(self._drain, lane, name=f"{self._label} lane")

    async def _drain(self, lane: str) -> None:
        try:
            while not self._stopping and (queue := self._queues.get(lane)):
                async with self._limiter:
                    if self._stopping:
                        break  # waited for a slot past the stop: leave it queued
                    await self._handle_one(queue[0])
                queue.popleft()
        finally:
            self._active.discard(lane)
            if not self._active:
                self._quiet.set()
            if not self._queues.get(lane):
                self._queues.pop(lane, None)
            if not self._queues:
                self._idle.set()

    async def _handle_one(self, arrival: Arrival) -> None:
        try:
            await self._handle(arrival.item)
        except Exception as error:
            self._log.error(
                "%s failed; dropped",
                self._label,
                extra={"inbox_key": arrival.key, "error_type": type(error).__name__},
            )
        with anyio.CancelScope(shield=True):
            cleared = await self._clear(arrival.key)
        if cleared:
            self._known.discard(arrival.key)
        # Not cleared (the store is stalled): the key stays known, so this process never
        # handles the arrival again; a restart would (at least once, as after a crash).

    async def _clear(self, key: str) -> bool:
        """Delete a handled arrival's record, riding out a short store stall."""
        for wait in (*_CLEAR_WAITS, None):
            try:
                await self._host.store.delete_channel_records(self._channel, INBOX, prefix=key)
                return True
            except Exception as error:
                if wait is None:
                    self._log.error(
                        "%s inbox record not cleared",
                        self._label,
                        extra={"inbox_key": key, "error_type": type(error).__name__},
                    )
                    return False
                await anyio.sleep(wait)
        return False  # pragma: no cover - the loop returns


def _move(listed: InboxEntry, to: str, record: ChannelRecord | None) -> list[ChannelRecord]:
    """The compare-and-set of a take-over, as ``change_channel_record`` applies it: the core
    decides (:func:`may_move`), this builds the moved record."""
    current = None if record is None else InboxEntry(record.key, record.owner)
    if record is None or not may_move(listed, current):
        return []
    return [attrs.evolve(record, owner=to)]
