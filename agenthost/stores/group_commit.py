"""Group commit: store work from many concurrent callers, one thread hop and one transaction
per batch.

A store with a synchronous driver must run its work in a worker thread, and a thread hop
costs far more than a small transaction: a host that sends each store call through its own
hop spends its time scheduling hops. Here callers queue their work; whoever finds the
writer idle becomes the *leader*, takes everything queued (up to ``max_batch`` items, in
arrival order) and runs it in one hop through ``run_batch``, which runs each item inside
one transaction (a savepoint per item, so one item's failure undoes only its own writes)
and commits once. Every caller is answered only after that commit, so an answer still
means "durable". While a batch runs, new work queues up and goes out together in the next
one: the busier the host, the larger the batches.

Rules:

1. Work runs in arrival order, one batch at a time: the connection is never used by two
   threads at once.
2. A caller cancelled before its work was taken withdraws it; once taken, its work runs to
   the end and the caller waits for the commit (shielded) and gets its answer, seeing the
   cancellation at its next checkpoint: a transaction is never abandoned half-way, and an
   answer that was committed (a lease granted, say) is never lost to its caller.
3. An item's exception is raised to its caller only; a failed commit (or a failure to begin)
   is raised to every caller of the batch.
4. A store may run a batch on the event loop instead (``run_inline``) when it cannot block
   there (the write lock is free at once) and is shorter than the hop: it answers whether
   it did, having touched nothing when it did not.
5. A leader yields to the event loop before it takes the queue: the tasks that are ready
   to run then (other requests on their way to the store) queue their work and share its
   transaction. A batch that runs inline holds the event loop, so without this step
   nothing could queue behind it and every call would pay its own BEGIN and COMMIT, which
   cost more than the statements of a small turn. While a yield brought more work (and the
   batch is not full) it yields again, up to ``gather_yields`` times: on a busy server
   requests reach the store a loop turn or two apart (each first passes through its HTTP
   parsing), and each that joins saves its own BEGIN and COMMIT; on an idle one the first
   yield brings nothing and the leader goes at once.
6. Work submitted as ``read_only`` writes nothing: a batch of such work only may run in a
   transaction that takes no write lock (the store's choice, ``WorkItem.read_only``).

It is runtime-neutral (anyio): the same code serves asyncio and trio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

ConnectionT = TypeVar("ConnectionT")
T = TypeVar("T")

DEFAULT_MAX_BATCH = 128
# Loop turns a leader waits for more work while each brings some (rule 5). Measured with 16
# connections invoking on SQLite: batches of ~3 calls -> ~12, commits per request
# 0.66 -> 0.16; more turns than 4 gathered no more.
DEFAULT_GATHER_YIELDS = 4


class WorkItem(Generic[ConnectionT]):
    """One caller's work in a batch; ``run_batch`` fills in ``result`` or ``error``."""

    __slots__ = ("error", "finished", "read_only", "result", "taken", "work")

    def __init__(self, work: Callable[[ConnectionT], Any], read_only: bool = False) -> None:
        self.work = work
        self.read_only = read_only
        self.result: Any = None
        self.error: BaseException | None = None
        self.taken = False
        self.finished = False


BatchRunner = Callable[[Sequence[WorkItem[ConnectionT]]], None]


class GroupCommit(Generic[ConnectionT]):
    """The queue and the leader hand-off; ``run_batch`` owns the connection and the SQL."""

    def __init__(
        self,
        run_batch: BatchRunner[ConnectionT],
        *,
        run_inline: Callable[[Sequence[WorkItem[ConnectionT]]], bool] | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        gather_yields: int = DEFAULT_GATHER_YIELDS,
    ) -> None:
        self._run_batch = run_batch
        self._run_inline = run_inline
        self._max_batch = max_batch
        self._gather_yields = gather_yields
        self._pending: list[WorkItem[ConnectionT]] = []
        self._busy = False
        # Made on first use, inside the event loop (an anyio Event needs one).
        self._batch_done: anyio.Event | None = None

    async def submit(self, work: Callable[[ConnectionT], T], *, read_only: bool = False) -> T:
        """Run ``work(connection)`` in the next batch; its result once the batch committed.

        ``read_only`` promises that ``work`` writes nothing (rule 6)."""
        item: WorkItem[ConnectionT] = WorkItem(work, read_only)
        self._pending.append(item)
        try:
            while not item.finished:
                if self._busy:
                    await self._next_batch_done()
                else:
                    await self._lead()
        except anyio.get_cancelled_exc_class():
            if not item.taken:
                self._pending.remove(item)
                raise
            # Taken: the work runs to its end; answer with it. The cancellation is still
            # pending on the caller's scope and reaches it at its next checkpoint.
            with anyio.CancelScope(shield=True):
                while not item.finished:
                    await self._next_batch_done()
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    async def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread while no batch runs (opening or closing the
        connection)."""
        with anyio.CancelScope(shield=True):
            while self._busy:
                await self._next_batch_done()
            self._busy = True
            try:
                result = await anyio.to_thread.run_sync(fn)
            finally:
                self._hand_over()
        return result

    async def _lead(self) -> None:
        self._busy = True
        try:
            await self._gather()
        except BaseException:
            self._hand_over()  # cancelled before taking anything: someone else leads
            raise
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        for item in batch:
            item.taken = True
        try:
            if self._run_inline is not None and self._run_inline(batch):
                return  # run on the event loop: it could not block (rule 4)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._run_batch, batch)
        except BaseException as exc:  # the runner itself broke: nobody's work is known done
            for item in batch:
                if not item.finished:
                    item.error, item.finished = exc, True
            raise
        finally:
            self._hand_over()

    async def _gather(self) -> None:
        """Let the tasks that are ready to run reach the queue first, for as long as they
        keep coming (rule 5)."""
        pending = self._pending
        for _ in range(self._gather_yields):
            queued = len(pending)
            await anyio.lowlevel.checkpoint()
            if len(pending) == queued or len(pending) >= self._max_batch:
                return

    async def _next_batch_done(self) -> None:
        if self._batch_done is None:
            self._batch_done = anyio.Event()
        await self._batch_done.wait()

    def _hand_over(self) -> None:
        self._busy = False
        done, self._batch_done = self._batch_done, None
        if done is not None:
            done.set()
