"""The PostgreSQL store's connections: a small fixed set of lanes, each one connection behind
one group-commit queue.

A lane is :class:`agenthost.stores.group_commit.GroupCommit` over one psycopg connection:
the calls that arrive while its batch runs go out together in one worker-thread hop and one
transaction with a savepoint per call, answered after the commit. Several lanes (the pool
size, 4 by default) let a replica overlap its round trips to the server: a batch waiting on
a row lock another replica holds delays only its own lane. A call goes to the lane with the
fewest calls in flight. The number of connections a replica opens is fixed: the lanes, plus
one for ``LISTEN`` when something subscribes to notifications.

Locks a call takes live until its batch commits. Two batches on different replicas (or
lanes) can then wait on each other's locks; PostgreSQL's deadlock detector aborts one
statement. Rolling back to that call's savepoint would not do: the cycle may run through
locks an earlier call of the same batch took, which the savepoint keeps, so the retry
would deadlock again. The lane rolls the whole batch back and runs its calls again one
transaction each, each retried up to :data:`RETRIES` times, so a deadlock costs a delay,
not an error.

A lane whose connection broke (a restarted server, a dropped network) reconnects: found
at the start of a batch, transparently; in the middle of one, the batch fails (its callers
see the error; nothing of it was committed) and the next one reconnects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import TextLoader

from agenthost.stores.group_commit import GroupCommit, WorkItem

T = TypeVar("T")
Conn = psycopg.Connection[Any]

DEFAULT_POOL_SIZE = 4
RETRIES = 5
# A statement that waits longer than this on a lock is cancelled: a wedged replica delays
# others by at most this much, and its caller gets an error instead of hanging.
LOCK_TIMEOUT_MS = 30_000

# How the store's connections show in ``pg_stat_activity``.
APPLICATION = "agenthost"

_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def connect(dsn: str, schema: str | None) -> Conn:
    """One autocommit connection (transactions are opened explicitly) reading ``jsonb`` as
    its JSON text, which ``stores.codec`` decodes."""
    # Added to the URL's own ``options`` (say ``-c synchronous_commit=off``), not replacing them.
    given = conninfo_to_dict(dsn).get("options")
    options = f"{given or ''} -c lock_timeout={LOCK_TIMEOUT_MS}".strip()
    if schema is not None:
        options += f" -c search_path={schema}"
    conn = psycopg.connect(dsn, autocommit=True, options=options, application_name=APPLICATION)
    conn.adapters.register_loader("jsonb", TextLoader)
    return conn


class Lane:
    """One connection and the group commit in front of it."""

    def __init__(self, open_connection: Callable[[], Conn]) -> None:
        self._open_connection = open_connection
        self._conn: Conn | None = None
        self.in_flight = 0
        self.commit: GroupCommit[Conn] = GroupCommit(self._run_batch)

    def _connection(self) -> Conn:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._conn = None
        if self._conn is None:
            self._conn = self._open_connection()
        return self._conn

    def _begin(self) -> Conn:
        """Open the batch's transaction. A connection found dead here (the server restarted,
        an idle timeout closed it) ran nothing of the batch: reconnect once and go on."""
        conn = self._connection()
        try:
            conn.execute("BEGIN")
        except psycopg.OperationalError:
            if not (conn.broken or conn.closed):
                raise
            self._conn = None
            conn = self._connection()
            conn.execute("BEGIN")
        return conn

    def run_alone(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` on this lane's connection (called through ``exclusive``)."""
        return fn(self._connection())

    def close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run_batch(self, batch: Sequence[WorkItem[Conn]]) -> None:
        if all(item.read_only for item in batch):
            self._run_reads(batch)
            return
        try:
            conn = self._begin()
        except Exception as exc:
            _fail(batch, exc)
            return
        try:
            if len(batch) == 1:
                _run_alone(conn, batch[0])  # no other call to shield: no savepoint
            else:
                try:
                    for item in batch:
                        _run_item(conn, item)
                except _RETRYABLE:
                    # Nothing of the batch is kept; each call runs again on its own.
                    conn.execute("ROLLBACK")
                    for item in batch:
                        item.result, item.error = None, None
                        conn.execute("BEGIN")
                        _run_alone(conn, item)
                        conn.execute("COMMIT")
                    conn.execute("BEGIN")  # closed by the COMMIT below, empty
            conn.execute("COMMIT")
        except Exception as exc:
            if not conn.broken and not conn.closed:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    self._conn = None
            _fail(batch, exc)
            return
        for item in batch:
            item.finished = True

    def _run_reads(self, batch: Sequence[WorkItem[Conn]]) -> None:
        """A batch of reads only: each on the autocommit connection, no transaction. Under
        PostgreSQL's read committed each statement sees what was committed when it began,
        inside a transaction or not, so one saves the BEGIN and COMMIT round trips."""
        try:
            conn = self._connection()
        except Exception as exc:
            _fail(batch, exc)
            return
        for item in batch:
            try:
                item.result = item.work(conn)
            except Exception as exc:
                if conn.broken or conn.closed:
                    self._conn = None
                item.error = exc
            item.finished = True


def _run_item(conn: Conn, item: WorkItem[Conn]) -> None:
    """One call of a batch under its own savepoint: its failure undoes only its writes. A
    deadlock or serialization failure propagates: the batch runs again call by call."""
    conn.execute("SAVEPOINT item")
    try:
        item.result = item.work(conn)
    except _RETRYABLE:
        raise
    except Exception as exc:
        if conn.broken or conn.closed:
            raise
        conn.execute("ROLLBACK TO SAVEPOINT item")
        item.error = exc
    conn.execute("RELEASE SAVEPOINT item")


def _run_alone(conn: Conn, item: WorkItem[Conn]) -> None:
    """The one call of a batch: its failure rolls the transaction back, a deadlock or
    serialization failure runs it again in a new one."""
    for attempt in range(RETRIES + 1):
        try:
            item.result = item.work(conn)
            return
        except _RETRYABLE as exc:
            conn.execute("ROLLBACK")
            if attempt == RETRIES:
                item.error = exc
                conn.execute("BEGIN")
                return
            conn.execute("BEGIN")
        except Exception as exc:
            if conn.broken or conn.closed:
                raise
            conn.execute("ROLLBACK")
            conn.execute("BEGIN")  # the batch commits an empty transaction
            item.error = exc
            return


def _fail(batch: Sequence[WorkItem[Conn]], error: Exception) -> None:
    """Nothing of the batch committed: every caller hears why."""
    for item in batch:
        item.result, item.error, item.finished = None, error, True


class Lanes:
    """The fixed set of lanes of one store."""

    def __init__(self, open_connection: Callable[[], Conn], size: int) -> None:
        if size < 1:
            raise ValueError("a PostgreSQL store needs at least one connection")
        self._lanes = [Lane(open_connection) for _ in range(size)]

    async def submit(self, work: Callable[[Conn], T], *, read_only: bool = False) -> T:
        lane = min(self._lanes, key=lambda candidate: candidate.in_flight)
        lane.in_flight += 1
        try:
            return await lane.commit.submit(work, read_only=read_only)
        finally:
            lane.in_flight -= 1

    async def alone(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` on the first lane's connection, outside any batch (schema work)."""
        lane = self._lanes[0]
        return await lane.commit.exclusive(lambda: lane.run_alone(fn))

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for lane in self._lanes:
                await lane.commit.exclusive(lane.close_sync)
