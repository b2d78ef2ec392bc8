"""The converted-history cache answers exactly what a full conversion would, whatever
happened to the stored history between turns, and stays bounded; the live-session cache
hands an object back once, and only for the state it saved."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.backends.histories import ConvertedHistories, LiveSessions, SerializedHistories
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
    assert len(cache._entries) == 0
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


def _message(role: str, text: str) -> Any:
    from agent_framework import Content, Message

    return Message(role=role, contents=[Content.from_text(text)])


# Each step: a turn that appends to the live session; a restore from the saved form (new
# message objects, as after a restart or on another replica); a message replaced in place
# (the same length, another object); a session forked from an earlier save.
SESSION_STEPS = st.lists(
    st.tuples(st.sampled_from(["turn", "restore", "replace", "fork"]), st.text(max_size=3)),
    max_size=10,
)


@settings(max_examples=100, deadline=None)
@given(SESSION_STEPS)
def test_a_session_is_saved_as_its_own_to_dict_saves_it(steps: list[tuple[str, str]]) -> None:
    from agent_framework import AgentSession

    serialized = SerializedHistories()
    session = AgentSession()
    session.state["in_memory"] = {"messages": []}
    session.state["notes"] = {"count": 0}
    saves = [serialized.to_dict(session)]
    snapshots = [copy.deepcopy(saves[0])]
    for kind, text in steps:
        messages = session.state["in_memory"]["messages"]
        if kind == "turn":
            messages += [_message("user", text), _message("assistant", text + "!")]
            session.state["notes"] = {"count": len(messages)}
        elif kind == "restore":
            session = AgentSession.from_dict(dict(saves[-1]))
        elif kind == "replace" and messages:
            messages[0] = _message("user", "replaced " + text)
        elif kind == "fork":
            session = AgentSession.from_dict(dict(saves[len(saves) // 2]))
        saves.append(serialized.to_dict(session))
        snapshots.append(copy.deepcopy(saves[-1]))
        assert saves[-1] == session.to_dict()
    assert saves == snapshots  # no save changed a saved one (they share message dicts)


def test_a_growing_history_is_serialized_once_a_message() -> None:
    from agent_framework import AgentSession, Message

    calls = 0
    original = Message.to_dict

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    serialized = SerializedHistories()
    session = AgentSession()
    session.state["in_memory"] = {"messages": []}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Message, "to_dict", counting)
        for turn in range(10):
            session.state["in_memory"]["messages"] += [
                _message("user", str(turn)),
                _message("assistant", str(turn)),
            ]
            serialized.to_dict(session)
    assert calls == 20  # each message once, not 2 + 4 + ... + 20


def test_a_session_of_another_class_is_saved_by_its_own_to_dict() -> None:
    from agent_framework import AgentSession

    class Custom(AgentSession):
        def to_dict(self) -> dict[str, Any]:
            return {**super().to_dict(), "custom": True}

    session = Custom()
    session.state["in_memory"] = {"messages": [_message("user", "hi")]}
    assert SerializedHistories().to_dict(session)["custom"] is True
