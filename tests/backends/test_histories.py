"""The converted-history cache answers exactly what a full conversion would, whatever
happened to the stored history between turns, and stays bounded; the live-session cache
hands an object back once, and only for the state it saved."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.backends.histories import ConvertedHistories, LiveSessions
from agenthost.backends.targets import CallableTarget, TargetCall
from agenthost.sansio_core.types import ChannelIdentity, ChannelRequest, HostMessage, SessionRef
from agenthost.stores.codec import structure_messages, unstructure_messages


def stored(*texts: str) -> list[dict[str, Any]]:
    return unstructure_messages([HostMessage.user(text) for text in texts])


# Each step: a turn that appends (and is saved), a save that was lost, or a history
# rewritten elsewhere (another replica, a repair) with the same length.
STEPS = st.lists(
    st.tuples(st.sampled_from(["turn", "lost", "rewritten"]), st.text(max_size=3)),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_the_cache_always_answers_the_full_conversion(steps: list[tuple[str, str]]) -> None:
    cache = ConvertedHistories()
    history: list[dict[str, Any]] = []
    for kind, text in steps:
        got = cache.messages("s1", history)
        assert got == tuple(structure_messages(history))
        saved = [*history, *stored(text)]
        cache.remember("s1", saved, [*got, HostMessage.user(text)])
        if kind == "turn":
            history = saved
        elif kind == "rewritten" and saved:
            history = [*saved[:-1], *stored(text + "!")]
        # "lost": the store still holds the history before the turn
    assert cache.messages("s1", history) == tuple(structure_messages(history))


def test_only_the_newest_sessions_are_kept() -> None:
    cache = ConvertedHistories(max_sessions=2)
    for session in ("a", "b", "c"):
        cache.remember(session, stored("hi"), [HostMessage.user("hi")])
    assert len(cache._entries) == 2 and "a" not in cache._entries
    cache.messages("b", stored("hi", "again"))  # touched: now the newest
    cache.remember("d", stored("hi"), [HostMessage.user("hi")])
    assert set(cache._entries) == {"b", "d"}


def test_a_stateless_turn_is_never_cached() -> None:
    cache = ConvertedHistories()
    cache.remember(None, stored("hi"), [HostMessage.user("hi")])
    assert cache._entries == {}
    assert cache.messages(None, stored("x")) == (HostMessage.user("x"),)


def test_a_live_session_is_handed_back_once_and_only_for_its_state() -> None:
    cache: LiveSessions[object] = LiveSessions()
    live = object()
    cache.keep("s1", {"turns": [1]}, live)
    assert cache.take("s1", {"turns": [1, 2]}) is None  # saved since: restore
    cache.keep("s1", {"turns": [1]}, live)
    assert cache.take("s1", {"turns": [1]}) is live  # an equal copy, as a store reads it
    assert cache.take("s1", {"turns": [1]}) is None  # taken: a second turn restores
    cache.keep(None, {}, live)
    assert cache.take(None, {}) is None


def test_only_the_newest_live_sessions_are_kept() -> None:
    cache: LiveSessions[str] = LiveSessions(max_sessions=2)
    for session in ("a", "b", "c"):
        cache.keep(session, {}, session)
    assert list(cache._entries) == ["b", "c"]


def test_an_unchanged_history_is_handed_out_without_a_copy() -> None:
    cache = ConvertedHistories()
    history = stored("a", "b")
    converted = cache.messages("s1", history)
    cache.remember("s1", history, converted)
    assert cache.messages("s1", history) is converted


@pytest.mark.anyio
async def test_a_target_that_changes_its_messages_changes_no_later_turn() -> None:
    seen: list[list[str]] = []

    async def vandal(messages: list[HostMessage]) -> str:
        seen.append([m.text for m in messages])
        reply = f"r{len(seen)}"
        messages.clear()  # its own list: the host's history must not notice
        messages.append(HostMessage.user("injected"))
        return reply

    target = CallableTarget(vandal)
    state: dict[str, Any] | None = None
    for text in ("one", "two", "three"):
        request = ChannelRequest("app", ChannelIdentity("app", "u"), (HostMessage.user(text),))
        done = await target.run(TargetCall(request, SessionRef("k", "s1", "s1"), state))
        state = dict(done.new_state or {})
    assert seen == [["one"], ["one", "r1", "two"], ["one", "r1", "two", "r2", "three"]]
    assert [m.text for m in structure_messages(state["messages"])] == [
        "one", "r1", "two", "r2", "three", "r3",
    ]  # fmt: skip
