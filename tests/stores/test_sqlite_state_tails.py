"""The SQLite store's session states as a head and appended tails: a turn writes what it
added, another process's save or a lost one is never read over, and files written before
the layout read on (``agenthost.stores.session_states``)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agenthost.sansio_core import leases, sessions
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import MultitaskStrategy
from agenthost.stores import sqlite as sqlite_store
from agenthost.stores.codec import dump_lease
from agenthost.stores.session_states import MAX_TAILS
from agenthost.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

ENQUEUE = MultitaskStrategy.ENQUEUE
TTL = 30.0


def message(n: int) -> dict[str, Any]:
    return {"role": "user", "parts": [{"type": "text", "text": f"héllo {n}"}]}


def query(path: Path, sql: str, *args: Any) -> list[Any]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, args).fetchall()


async def turn(store: SQLiteStore, at: float, state: dict[str, Any] | None) -> SessionRecord:
    run_id = f"run-{at}"
    granted = await store.apply_lease_event("s1", leases.Arrive(run_id, ENQUEUE, at, TTL))
    assert isinstance(granted.decision, leases.Granted) and granted.session is not None
    saved = sessions.after_successful_run(granted.session, state, at, expires_when_idle=True)
    assert await store.finish_run("s1", run_id, saved, now=at)
    return saved


async def read_back(path: Path) -> Any:
    """The session's state as another process reads it (nothing kept)."""
    other = SQLiteStore(path)
    try:
        loaded = await other.load_session("s1")
        assert loaded is not None
        return loaded.state
    finally:
        await other.close()


async def new_store(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.create_session(SessionAlias("ik", "direct", "s1", 1, 1.0), now=1.0)
    return store


async def test_a_returning_turn_writes_its_messages_and_a_small_head(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await new_store(path)
    history: list[dict[str, Any]] = []
    for n in range(2 * MAX_TAILS + 5):
        history = [*history, message(2 * n), message(2 * n + 1)]
        before = query(path, "SELECT seq, items FROM session_state_tails ORDER BY seq")
        await turn(store, 2.0 + n, {"messages": history})
        after = query(path, "SELECT seq, items FROM session_state_tails ORDER BY seq")
        head = query(path, "SELECT state FROM sessions")[0][0]
        assert len(after) <= MAX_TAILS
        if after[: len(before)] == before and len(after) == len(before) + 1:
            # An appending turn: the earlier rows untouched, one row of its two messages
            # (of the whole list, the turn it grew long and left the head).
            seq, items = after[-1]
            assert json.loads(items) == (history if seq == 0 else history[-2:])
            assert head == '{"messages":[]}'
    # The reads of another process (no state kept) assemble the same history.
    assert await read_back(path) == {"messages": history}
    appending = query(path, "SELECT count(*) FROM session_state_tails")[0][0]
    assert 0 < appending <= MAX_TAILS
    await store.close()


async def test_two_processes_taking_turns_each_read_the_others_save(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = await new_store(path)
    second = SQLiteStore(path)
    history = [message(n) for n in range(20)]
    for n in range(12):
        store = first if n % 3 else second
        stored = await store.load_session("s1")
        assert stored is not None
        assert stored.state == (None if n == 0 else {"messages": history})
        history = [*history, message(100 + n)]
        await turn(store, 2.0 + n, {"messages": history})
    assert await read_back(path) == {"messages": history}
    for store in (first, second):
        await store.close()


def snapshot(path: Path) -> tuple[list[Any], list[Any]]:
    return (
        query(path, "SELECT state, state_tag, state_tails FROM sessions"),
        query(path, "SELECT session_id, seq, path, items FROM session_state_tails"),
    )


def restore(path: Path, rows: tuple[list[Any], list[Any]]) -> None:
    """Put the session's state back as ``snapshot`` found it, behind the store's back."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE sessions SET state = ?, state_tag = ?, state_tails = ?", rows[0][0])
        conn.execute("DELETE FROM session_state_tails")
        conn.executemany("INSERT INTO session_state_tails VALUES (?, ?, ?, ?)", rows[1])


async def test_a_save_the_file_lost_is_not_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await new_store(path)
    history = [message(n) for n in range(20)]
    await turn(store, 2.0, {"messages": history})
    before = snapshot(path)
    await turn(store, 3.0, {"messages": [*history, message(50)]})
    restore(path, before)  # as a rolled-back transaction leaves the file
    loaded = await store.load_session("s1")
    assert loaded is not None and loaded.state == {"messages": history}
    grown = {"messages": [*history, message(60)]}
    await turn(store, 4.0, grown)
    assert await read_back(path) == grown
    await store.close()


async def test_an_append_lands_only_on_the_state_it_grew_from(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await new_store(path)
    history = [message(n) for n in range(20)]
    await turn(store, 2.0, {"messages": history})
    before = snapshot(path)
    history = [*history, message(50)]
    await turn(store, 3.0, {"messages": history})
    granted = await store.apply_lease_event("s1", leases.Arrive("run-b", ENQUEUE, 4.0, TTL))
    assert granted.session is not None and granted.session.state == {"messages": history}
    # Between the turn's read and its save the row changes under it (here: the last save
    # is undone): the save must not append to a state it did not read.
    restore(path, before)
    grown = {"messages": [*history, message(60)]}
    saved = sessions.after_successful_run(granted.session, grown, 5.0, expires_when_idle=True)
    assert await store.finish_run("s1", "run-b", saved, now=5.0)
    assert await read_back(path) == grown
    await store.close()


async def test_an_expired_state_leaves_no_tails(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await new_store(path)
    history = [message(n) for n in range(20)]
    await turn(store, 2.0, {"messages": history})
    await turn(store, 3.0, {"messages": [*history, message(20)]})
    assert query(path, "SELECT count(*) FROM session_state_tails")[0][0] == 2
    assert await store.expire_idle_states(now=1000.0, ttl=10.0, limit=10) == 1
    assert query(path, "SELECT count(*) FROM session_state_tails")[0][0] == 0
    loaded = await store.load_session("s1")
    assert loaded is not None and loaded.state is None
    await turn(store, 1001.0, {"messages": [message(1)]})
    assert query(path, "SELECT state_tails FROM sessions")[0][0] == 0
    await store.close()


async def test_a_version_3_file_reads_its_states_and_saves_them_in_tails(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    history = [message(n) for n in range(20)]
    with pytest.MonkeyPatch.context() as patch:  # as agenthost wrote it at version 3
        patch.setattr(sqlite_store, "SCHEMA_VERSION", 3)
        patch.setattr(
            sqlite_store,
            "MIGRATIONS",
            {1: sqlite_store.MIGRATIONS[1], 2: sqlite_store.MIGRATIONS[2]},
        )
        old = SQLiteStore(path)
        await old.open()
        await old.close()
    # Version 3 wrote the state whole into the session's row.
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO session_aliases VALUES ('ik', 'direct', 's1', 1, 1.0)")
        conn.execute(
            "INSERT INTO sessions (session_id, owner, qualifier, generation, created_at,"
            " updated_at, turns, state) VALUES ('s1', 'ik', 'direct', 1, 1.0, 1.0, 1, ?)",
            (json.dumps({"messages": history}),),
        )
    assert await read_back(path) == {"messages": history}
    store = SQLiteStore(path)
    grown = {"messages": [*history, message(20)]}
    await turn(store, 2.0, grown)
    assert query(path, "SELECT count(*) FROM session_state_tails")[0][0] == 1
    await store.close()
    assert await read_back(path) == grown


async def test_a_lease_another_connection_changed_is_read_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    arrive = leases.Arrive("run-1", MultitaskStrategy.ENQUEUE, 2.0, 30.0)
    assert isinstance((await store.apply_lease_event("s1", arrive)).decision, leases.Granted)
    # Another process takes the lease over (its holder died): this store must see it.
    taken = leases.LeaseState("s1", holder="run-9", expires_at=1e9, grants=2)
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute(
            "UPDATE session_leases SET state = ? WHERE session_id = 's1'", (dump_lease(taken),)
        )
    release = leases.Release("run-1", 3.0)
    answer = await store.apply_lease_event("s1", release)
    assert not isinstance(answer.decision, leases.Released)
    await store.close()
