"""Session states stored as a head and appended tails: what a save writes, what a read
answers, and never a stale answer (``agenthost.stores.session_states``)."""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import leases
from agenthost.stores.codec import dump_lease, to_state_json
from agenthost.stores.session_states import (
    MAX_TAILS,
    SPLIT_ITEMS,
    KeptLeases,
    SessionStates,
    StateWrite,
    assemble,
)


def message(n: int) -> dict[str, Any]:
    return {"role": "user", "parts": [{"type": "text", "text": f"héllo {n} ✓"}]}


@attrs.define
class Row:
    """One session's row and tail rows, written as the SQLite store writes them."""

    head: str | None = None
    tag: str | None = None
    tails: list[tuple[int, str, str]] = attrs.Factory(list)

    def apply(self, write: StateWrite) -> bool:
        """Apply ``write``; an appending write applies only over the tag it replaces."""
        if write.replaces is not None and write.replaces != self.tag:
            return False
        if write.rewrite:
            self.tails = []
        self.tails.extend(write.tails)
        self.head, self.tag = write.head, write.tag
        assert [seq for seq, _, _ in self.tails] == list(range(len(self.tails)))
        assert [(p, i) for _, p, i in self.tails] == write.rows
        assert len(self.tails) <= MAX_TAILS
        return True

    def read(self, states: SessionStates | None = None) -> Any:
        assert self.head is not None
        rows = [(path, items) for _, path, items in self.tails]
        if states is None:
            return assemble(self.head, rows)
        return states.read("s1", self.head, self.tag, lambda: rows)


def save(states: SessionStates, row: Row, state: dict[str, Any]) -> StateWrite:
    write = states.plan("s1", state)
    if not row.apply(write):
        write = states.plan_whole(state)
        assert row.apply(write)
    states.saved("s1", write)
    return write


def as_json(value: Any) -> Any:
    return json.loads(to_state_json(value))


def test_a_grown_history_writes_only_what_it_appended() -> None:
    states, row = SessionStates(), Row()
    history = [message(n) for n in range(SPLIT_ITEMS + 2)]
    first = save(states, row, {"messages": history, "turn": 1})
    # A long list goes to a tail; the head holds the rest.
    assert first.replaces is None
    assert json.loads(first.head) == {"messages": [], "turn": 1}
    assert [(p, json.loads(i)) for _, p, i in first.tails] == [('["messages"]', history)]

    grown = [*history, message(100), message(101)]
    second = save(states, row, {"messages": grown, "turn": 2})
    assert second.replaces == first.tag and second.tag != first.tag
    assert json.loads(second.head) == {"messages": [], "turn": 2}
    assert second.tails == [(1, '["messages"]', to_state_json([message(100), message(101)]))]
    assert row.read() == {"messages": grown, "turn": 2}


def test_a_list_that_grows_long_moves_to_a_tail() -> None:
    states, row = SessionStates(), Row()
    nested = {"state": {"memory": {"messages": [message(0)]}}, "type": "session"}
    save(states, row, nested)
    assert row.tails == []  # short: all in the head
    items = [nested["state"]["memory"]["messages"][0], *(message(n) for n in range(SPLIT_ITEMS))]
    grown = {"state": {"memory": {"messages": items}}, "type": "session"}
    write = save(states, row, grown)
    assert write.replaces is not None
    assert json.loads(write.head) == {"state": {"memory": {"messages": []}}, "type": "session"}
    assert write.tails == [(0, '["state","memory","messages"]', to_state_json(items))]
    assert row.read() == grown


def test_a_save_that_did_not_only_append_is_written_whole() -> None:
    states, row = SessionStates(), Row()
    history = [message(n) for n in range(SPLIT_ITEMS)]
    save(states, row, {"messages": history})
    replaced = [message(99), *history[1:], message(100)]  # an item replaced
    assert save(states, row, {"messages": replaced}).replaces is None
    gone: dict[str, Any] = {"other": 1}  # the tailed list is gone
    assert save(states, row, {"messages": replaced}).replaces is not None
    assert save(states, row, gone).replaces is None
    assert row.read() == gone


def test_a_kept_list_changed_after_its_save_is_not_appended_to() -> None:
    states, row = SessionStates(), Row()
    history = [message(n) for n in range(SPLIT_ITEMS)]
    save(states, row, {"messages": history})
    history.append(message(50))  # a caller broke the read-only rule
    grown = {"messages": [*history, message(51)]}
    assert save(states, row, grown).replaces is None
    assert row.read() == grown


def test_the_tails_are_joined_before_they_pass_the_limit() -> None:
    states, row = SessionStates(), Row()
    history = [message(n) for n in range(SPLIT_ITEMS)]
    save(states, row, {"messages": history})
    joined = 0
    for turn in range(3 * MAX_TAILS):
        history = [*history, message(1000 + turn)]
        write = save(states, row, {"messages": history})
        assert write.replaces is not None  # never written whole: it only grew
        if write.rewrite:
            joined += 1
            # One row of the whole list, from the texts stored.
            assert write.tails == [(0, '["messages"]', to_state_json(history))]
        assert len(row.tails) <= MAX_TAILS
    assert joined == 3  # about once every MAX_TAILS saves
    assert row.read() == {"messages": history}


def test_a_read_of_the_kept_tag_answers_the_kept_state_without_its_tails() -> None:
    states, row = SessionStates(), Row()
    state = {"messages": [message(n) for n in range(SPLIT_ITEMS)]}
    save(states, row, state)
    assert row.head is not None

    def no_tails() -> list[tuple[str, str]]:
        raise AssertionError("the tails were read")

    assert states.read("s1", row.head, row.tag, no_tails) is state
    # Another tag (another process saved, or this save was lost): read from the rows.
    other = SessionStates()
    assert (
        other.read("s1", row.head, "someone-else", lambda: [(p, i) for _, p, i in row.tails])
        == state
    )
    fresh = other.read("s1", row.head, "someone-else", no_tails)
    assert fresh == state and fresh is not state


def test_a_save_over_a_row_another_process_wrote_is_written_whole() -> None:
    mine, theirs, row = SessionStates(), SessionStates(), Row()
    history = [message(n) for n in range(SPLIT_ITEMS)]
    save(mine, row, {"messages": history})
    their_state = row.read(theirs)
    save(theirs, row, {"messages": [*their_state["messages"], message(70)]})
    # Mine still keeps the state before their save: its append must not land on theirs.
    attempt = mine.plan("s1", {"messages": [*history, message(80)]})
    assert attempt.replaces is not None and not row.apply(attempt)
    assert row.read(mine) == {"messages": [*history, message(70)]}


def test_a_state_saved_before_tags_is_read_and_then_written_whole() -> None:
    states = SessionStates()
    old = {"messages": [message(n) for n in range(SPLIT_ITEMS)]}
    row = Row(head=to_state_json(old), tag=None)
    assert row.read(states) == old
    assert save(states, row, {"messages": [*old["messages"], message(9)]}).replaces is None


def test_shapes_without_paths_are_stored_whole() -> None:
    states, row = SessionStates(), Row()
    for state in ({1: "a"}, {"nested": {2: [message(0)] * SPLIT_ITEMS}}):
        write = save(states, row, state)  # type: ignore[arg-type]
        assert write.tails == [] and row.read() == as_json(state)


def test_it_keeps_a_bounded_number_of_sessions() -> None:
    states = SessionStates(max_sessions=2)
    kept = {"messages": [message(0)]}
    write = states.plan_whole(kept)
    states.saved("s1", write)
    states.saved("s2", states.plan_whole({"a": 1}))
    states.saved("s3", states.plan_whole({"a": 2}))
    assert states.read("s1", write.head, write.tag, list) is not kept  # evicted: decoded


# A state as a target saves it: dicts with string keys, lists of JSON items.
json_items = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = st.sampled_from(["messages", "memory", "a", "b"])
paths = st.lists(keys, min_size=1, max_size=3).map(tuple)
steps = st.one_of(
    st.tuples(st.just("append"), paths, st.lists(json_items, min_size=1, max_size=SPLIT_ITEMS + 1)),
    st.tuples(st.just("set"), paths, json_items),
    st.tuples(st.just("replace"), paths, st.lists(json_items, max_size=SPLIT_ITEMS + 1)),
)


def changed(state: dict[str, Any], step: tuple[str, tuple[str, ...], Any]) -> dict[str, Any]:
    """A new state: ``state`` with one value appended to, set or replaced, copied along the
    path (saved states are read-only)."""
    kind, path, value = step
    new = dict(state)
    holder = new
    for key in path[:-1]:
        inner = holder.get(key)
        holder[key] = dict(inner) if type(inner) is dict else {}
        holder = holder[key]
    last = path[-1]
    if kind == "append":
        before = holder.get(last)
        holder[last] = [*before, *value] if type(before) is list else list(value)
    else:
        holder[last] = value
    return new


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=3 * MAX_TAILS // 2), st.booleans())
def test_every_save_reads_back_as_saved(
    script: list[tuple[str, tuple[str, ...], Any]], interleaved: bool
) -> None:
    mine, theirs, row = SessionStates(), SessionStates(), Row()
    state: dict[str, Any] = {}
    for n, step in enumerate(script):
        state = changed(state, step)
        # Two connections taking turns (the other reads before it saves), or one alone.
        saver = theirs if interleaved and n % 3 == 2 else mine
        if saver is theirs:
            row.read(theirs)
        save(saver, row, state)
        assert row.read() == as_json(state)
        assert row.read(SessionStates()) == as_json(state)
        assert row.read(saver) is state
    assert row.read(mine) == as_json(state)


def test_a_lease_read_as_last_written_is_the_state_written() -> None:
    kept = KeptLeases()
    granted = leases.LeaseState("s1", holder="run-1", expires_at=30.0, grants=1)
    text = kept.encode("s1", granted)
    assert text == dump_lease(granted)
    assert kept.decode("s1", text) is granted
    released = leases.LeaseState("s1", grants=1)
    assert kept.decode("s1", dump_lease(released)) == released
