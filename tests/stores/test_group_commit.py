"""Group commit in the SQLite store: calls that arrive while a batch runs share the next
transaction, each caller is answered after that commit, one caller's failure or
cancellation touches only its own work."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from agenthost.stores.base import ChannelRecord, RunNotFound
from agenthost.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

WAIT = 5.0  # seconds any step here may take at most


def record(key: str) -> ChannelRecord:
    return ChannelRecord("test", "item", key, {"n": key})


@pytest.fixture
async def store(tmp_path: Path, anyio_backend: str) -> AsyncIterator[SQLiteStore]:
    made = SQLiteStore(tmp_path / "state.db")
    await made.open()
    try:
        yield made
    finally:
        await made.close()


def commits_of(store: SQLiteStore) -> list[str]:
    """Trace the store's connection; the list fills with each COMMIT it runs."""
    conn = store._conn
    assert conn is not None
    seen: list[str] = []
    conn.set_trace_callback(lambda statement: seen.append(statement))
    return seen


def holding_the_write_lock(store: SQLiteStore) -> Callable[[], None]:
    """Take the file's write lock from another connection (as another process would), so
    the store's next batch waits for it in the worker thread and whatever is submitted
    meanwhile queues for the batch after; the returned function lets go."""
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    def release() -> None:
        other.execute("COMMIT")
        other.close()

    return release


async def queued(count: int) -> None:
    """Let ``count`` freshly started tasks reach the queue (they never wait on I/O first)."""
    for _ in range(count + 2):
        await anyio.lowlevel.checkpoint()


async def test_calls_queued_behind_a_batch_share_one_commit(store: SQLiteStore) -> None:
    statements = commits_of(store)
    release = holding_the_write_lock(store)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.put_channel_records, [record("k00")])  # waits for the lock
        await queued(1)
        for n in range(1, 20):
            tasks.start_soon(store.put_channel_records, [record(f"k{n:02}")])
        await queued(19)
        release()
    commits = [s for s in statements if s == "COMMIT"]
    assert len(commits) == 2  # the first, which waited for the lock, then the other 19
    stored = await store.list_channel_records("test", "item")
    assert [r.key for r in stored] == [f"k{n:02}" for n in range(20)]


async def test_calls_made_together_share_one_commit_on_the_event_loop(
    store: SQLiteStore,
) -> None:
    # Nothing holds the lock, so batches run inline, holding the event loop: the leader
    # lets the other ready callers queue first, and one transaction serves them all.
    await store.put_channel_records([record("warm")])
    statements = commits_of(store)
    async with anyio.create_task_group() as tasks:
        for n in range(5):
            tasks.start_soon(store.put_channel_records, [record(f"k{n}")])
    assert [s for s in statements if s == "COMMIT"] == ["COMMIT"]
    stored = await store.list_channel_records("test", "item")
    assert sorted(r.key for r in stored) == ["k0", "k1", "k2", "k3", "k4", "warm"]


async def test_callers_arriving_loop_turns_apart_share_one_commit(store: SQLiteStore) -> None:
    # On a busy server requests reach the store a loop turn or two apart: the leader keeps
    # yielding while each turn brings more work. Here the callers arrive one loop turn after
    # another, each just before the leader looks again. Under asyncio that is every time;
    # trio runs each loop turn's tasks in either order, so a few tries may be needed there.
    await store.put_channel_records([record("warm")])
    for attempt in range(100):
        statements = commits_of(store)

        async def after_turns(turns: int, key: str) -> None:
            for _ in range(turns):
                await anyio.lowlevel.checkpoint()
            await store.put_channel_records([record(key)])

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tasks:
                for turns in (3, 2, 1, 0):  # the last to start leads, the others follow
                    tasks.start_soon(after_turns, turns, f"k{attempt}-{turns}")
        if [s for s in statements if s == "COMMIT"] == ["COMMIT"]:
            break
    else:
        raise AssertionError("callers one loop turn apart never shared a commit")
    # Every try's records, past the default page of 100 when trio needed many tries.
    listed = await store.list_channel_records("test", "item", limit=4 * 100 + 1)
    stored = {r.key for r in listed}
    assert {f"k{n}-{turns}" for n in range(attempt + 1) for turns in range(4)} <= stored


async def test_a_failing_call_undoes_only_its_own_writes(store: SQLiteStore) -> None:
    from agenthost.sansio_core.background import Cancel

    outcomes: dict[str, object] = {}

    async def refused() -> None:
        try:
            await store.apply_run_event("no-such-run", Cancel(1.0, 60.0))
        except RunNotFound as exc:
            outcomes["refused"] = exc

    async def written() -> None:
        await store.put_channel_records([record("kept")])
        outcomes["written"] = True

    release = holding_the_write_lock(store)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.put_channel_records, [record("first")])  # waits for the lock
        await queued(1)
        tasks.start_soon(refused)
        tasks.start_soon(written)
        await queued(2)
        release()
    assert isinstance(outcomes["refused"], RunNotFound)
    assert outcomes["written"] is True
    assert await store.get_channel_record("test", "item", "kept") is not None


async def test_a_call_cancelled_while_queued_never_runs(store: SQLiteStore) -> None:
    release = holding_the_write_lock(store)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.put_channel_records, [record("first")])  # waits for the lock
        await queued(1)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await store.put_channel_records([record("withdrawn")])
        tasks.start_soon(store.put_channel_records, [record("after")])
        await queued(1)
        release()
    assert await store.get_channel_record("test", "item", "withdrawn") is None
    assert await store.get_channel_record("test", "item", "after") is not None


async def test_a_call_cancelled_once_taken_still_commits(store: SQLiteStore) -> None:
    entered, leave = threading.Event(), threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO channel_records (channel, kind, key, value, created_at)"
            " VALUES ('test', 'item', 'taken', '{}', 0)"
        )
        entered.set()
        leave.wait(WAIT)

    answered: list[object] = []
    release = holding_the_write_lock(store)  # so the write runs in the worker thread
    async with anyio.create_task_group() as tasks:

        async def caller() -> None:
            with anyio.CancelScope() as scope:
                tasks.start_soon(cancel_when_running, scope)
                answered.append(await store._run(slow_write))
                await anyio.sleep(WAIT)  # the pending cancellation lands here
                answered.append("not cancelled")

        async def cancel_when_running(scope: anyio.CancelScope) -> None:
            await queued(1)
            release()
            with anyio.fail_after(WAIT):
                while not entered.is_set():
                    await anyio.sleep(0.005)
            scope.cancel()
            await anyio.sleep(0.05)
            leave.set()

        tasks.start_soon(caller)
    assert answered == [None]  # answered after the commit, then cancelled
    assert await store.get_channel_record("test", "item", "taken") is not None


async def test_a_call_on_an_idle_store_is_its_own_transaction(store: SQLiteStore) -> None:
    # A batch of one needs no savepoint, and the lock wait is set only when it changes: an
    # idle host pays for its own statements, the BEGIN and the COMMIT, nothing else.
    await store.put_channel_records([record("warm")])  # the inline path's setting is made
    statements = commits_of(store)
    await store.put_channel_records([record("one")])
    assert [s.split()[0] for s in statements] == ["BEGIN", "INSERT", "COMMIT"]


async def test_a_failing_call_alone_in_its_batch_leaves_nothing(store: SQLiteStore) -> None:
    def fails_after_writing(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO channel_records (channel, kind, key, value, created_at)"
            " VALUES ('test', 'item', 'undone', '{}', 0)"
        )
        raise LookupError("refused after a write")

    with pytest.raises(LookupError):
        await store._run(fails_after_writing)
    assert await store.get_channel_record("test", "item", "undone") is None
    await store.put_channel_records([record("next")])  # the connection is usable again
    assert await store.get_channel_record("test", "item", "next") is not None


async def test_the_thread_still_waits_for_a_lock_the_inline_path_never_waits_for(
    store: SQLiteStore,
) -> None:
    # The inline path sets no wait; the batch that goes to the thread sets it back, so a
    # lock held briefly by another process is waited for rather than failing the call.
    await store.put_channel_records([record("inline")])
    release = holding_the_write_lock(store)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.put_channel_records, [record("waited")])
        await anyio.sleep(0.2)  # the batch is in the thread, waiting on the lock
        release()
    assert await store.get_channel_record("test", "item", "waited") is not None


def _open_temp_files() -> list[str]:
    """The SQLite temp files this process holds open (SQLite names them ``etilqs_*`` and
    unlinks them at once, so only the open descriptors show them)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # a descriptor closed while listing
            target = os.readlink(fd)
            if "etilqs_" in target:
                found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists descriptors in /proc")
async def test_a_batchs_savepoint_journal_stays_in_memory(store: SQLiteStore) -> None:
    # Each item of a batch runs under a savepoint: SQLite journals the pages it changes
    # until its RELEASE, and past 64 KiB in a temp file by default, a system call per page
    # on a busy host (an item that rewrites a few large rows passes that). In memory, no file.
    def big(key: str, text: str) -> ChannelRecord:
        return ChannelRecord("test", "item", key, {"text": text * 3000})

    await store.put_channel_records([big(f"k{n:02}", "a") for n in range(40)])
    statements = commits_of(store)
    seen_inside: list[list[str]] = []

    def look(conn: sqlite3.Connection) -> None:
        seen_inside.append(_open_temp_files())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.put_channel_records, [big(f"k{n:02}", "b") for n in range(40)])
        tasks.start_soon(store._run, look)  # the next item of the same batch
    assert statements.count("SAVEPOINT item") == 2  # one batch of two items
    assert seen_inside == [[]]
    stored = await store.list_channel_records("test", "item", limit=50)
    assert [r.value["text"][0] for r in stored] == ["b"] * 40
