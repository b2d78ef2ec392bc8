"""Session states kept as text between turns: the same bytes as a full encode, the same value
as a full decode, and never a stale answer."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agenthost.sansio_core import leases
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import MultitaskStrategy
from agenthost.stores import session_states
from agenthost.stores.codec import dump_lease, to_state_json
from agenthost.stores.session_states import KeptLeases, SessionStates
from agenthost.stores.sqlite import SQLiteStore


def message(n: int) -> dict[str, Any]:
    return {"role": "user", "parts": [{"type": "text", "text": f"héllo {n} ✓"}]}


def test_a_grown_history_encodes_as_a_full_encode_does() -> None:
    states = SessionStates()
    history: list[dict[str, Any]] = []
    for turn in range(5):
        history = [*history, message(2 * turn), message(2 * turn + 1)]
        state = {"messages": history, "turn": turn, "empty": [], "meta": {"x": 1.5}}
        assert states.encode("s1", state) == to_state_json(state)


def test_only_the_appended_items_are_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    states = SessionStates()
    first = [message(0), message(1)]
    states.encode("s1", {"messages": first})
    encoded: list[Any] = []
    real = session_states._encode

    def counting(value: Any) -> str:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(session_states, "_encode", counting)
    grown = {"messages": [*first, message(2)]}
    text = states.encode("s1", grown)
    assert text == to_state_json(grown)
    assert [message(2)] in encoded and first not in encoded and grown["messages"] not in encoded


def test_a_list_changed_since_it_was_kept_is_encoded_again() -> None:
    states = SessionStates()
    history = [message(0), message(1)]
    states.encode("s1", {"messages": history})
    # Items replaced (not the same objects), or the kept list changed in place.
    replaced = {"messages": [message(5), message(1), message(2)]}
    assert states.encode("s1", replaced) == to_state_json(replaced)
    kept = replaced["messages"]
    kept.append(message(3))  # a caller broke the read-only rule: still no stale text
    grown = {"messages": [*kept, message(4)]}
    assert states.encode("s1", grown) == to_state_json(grown)


def test_shapes_it_does_not_split_are_encoded_whole() -> None:
    states = SessionStates()
    for state in ({1: "a"}, {"a": float("inf")}, {"nested": {"messages": [message(0)]}}):
        try:
            expected = to_state_json(state)
        except ValueError:
            with pytest.raises(ValueError):
                states.encode("s1", state)
        else:
            assert states.encode("s1", state) == expected


def test_a_read_of_the_text_kept_answers_the_same_object_and_other_text_is_decoded() -> None:
    states = SessionStates()
    state = {"messages": [message(0)]}
    text = states.encode("s1", state)
    assert states.decode("s1", text) is state
    other = to_state_json({"messages": [message(9)]})
    assert states.decode("s1", other) == {"messages": [message(9)]}
    assert states.decode("s2", text) == state and states.decode("s2", text) is not state


def test_it_keeps_a_bounded_number_of_sessions() -> None:
    states = SessionStates(max_sessions=2)
    kept = {"messages": [message(0)]}
    text = states.encode("s1", kept)
    states.encode("s2", {"a": 1})
    states.encode("s3", {"a": 2})
    assert states.decode("s1", text) is not kept  # evicted: decoded again


@pytest.mark.anyio
async def test_a_state_another_connection_saved_is_read_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    await store.create_session(SessionAlias("key", "direct", "s1", 0, 1.0), now=1.0)
    arrive = leases.Arrive("run-1", MultitaskStrategy.ENQUEUE, 2.0, 30.0)
    await store.apply_lease_event("s1", arrive)
    mine = SessionRecord("s1", "key", "direct", 0, 1.0, 3.0, {"messages": [message(0)]}, 1)
    assert await store.finish_run("s1", "run-1", mine, now=3.0)
    loaded = await store.load_session("s1")
    # Read back as saved without a decode: the very state it was given.
    assert loaded == mine and loaded is not None and loaded.state is mine.state
    # Another process saves the same session: this store's kept text is no longer stored.
    theirs = {"messages": [message(0), message(1)]}
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute("UPDATE sessions SET state = ? WHERE session_id = 's1'", (json.dumps(theirs),))
    loaded = await store.load_session("s1")
    assert loaded is not None and loaded.state == theirs
    await store.close()


def test_a_lease_read_as_last_written_is_the_state_written() -> None:
    kept = KeptLeases()
    granted = leases.LeaseState("s1", holder="run-1", expires_at=30.0, grants=1)
    text = kept.encode("s1", granted)
    assert text == dump_lease(granted)
    assert kept.decode("s1", text) is granted
    released = leases.LeaseState("s1", grants=1)
    assert kept.decode("s1", dump_lease(released)) == released


@pytest.mark.anyio
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
