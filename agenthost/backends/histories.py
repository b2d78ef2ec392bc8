"""Recent sessions' histories in the form their target works with, kept between turns.

A session's stored history only grows, and restoring all of it from its stored form on
every turn costs time in proportion to the conversation's length. Two caches keep, for the
most recent sessions of this process, what the last turn ended with:

- :class:`ConvertedHistories`, for a plain async target: the host messages and what they
  were converted from, so a turn converts only what was appended since;
- :class:`LiveSessions`, for an Agent Framework agent: the ``AgentSession`` a turn ended
  with and the state it was saved as, so the next turn continues it without restoring it;
- :class:`SerializedHistories`, for the same agent: the saved form of each history message,
  so saving a session serializes only the messages its last turn added.

Both are checked, never trusted: a stored state that is not the one cached (another replica
saved a turn since, a save was lost, the session was forked from an earlier turn) is
restored from the store, as after a restart, when the caches are empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from agenthost.recent import RecentMap
from agenthost.sansio_core.types import HostMessage
from agenthost.stores.codec import structure_messages

DEFAULT_SESSIONS = 256

LiveT = TypeVar("LiveT")


class ConvertedHistories:
    """A bounded, least-recently-used map from session id to its converted history."""

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        # session id -> (how many stored messages were converted, the last of them, messages)
        self._entries: RecentMap[str, tuple[int, Any, tuple[HostMessage, ...]]] = RecentMap(
            max_sessions
        )

    def messages(
        self, session_id: str | None, stored: Sequence[Mapping[str, Any]]
    ) -> tuple[HostMessage, ...]:
        """The history ``stored`` (the session's stored form) as host messages.

        A tuple, shared with the cache while nothing was appended: a turn's history is
        not copied again unless it changed.
        """
        entry = self._entries.get(session_id) if session_id is not None else None
        if entry is not None:
            count, last, converted = entry
            if count <= len(stored) and (count == 0 or stored[count - 1] == last):
                if count == len(stored):
                    return converted
                return (*converted, *structure_messages(stored[count:]))
        return tuple(structure_messages(stored))

    def remember(
        self,
        session_id: str | None,
        stored: Sequence[Mapping[str, Any]],
        messages: Sequence[HostMessage],
    ) -> None:
        """``messages`` is ``stored`` converted: the history a successful turn saves (kept
        as it is when it is a tuple already)."""
        if session_id is None or len(stored) != len(messages):
            return
        self._entries.put(
            session_id, (len(stored), stored[-1] if stored else None, tuple(messages))
        )


class LiveSessions(Generic[LiveT]):
    """A bounded, least-recently-used map from a session's own id to the live object a turn
    ended with and the state that turn saved.

    An object is handed out once (:meth:`take` removes it): a turn that fails or is
    cancelled half-way leaves nothing behind, and two turns never share one object. The
    key is the id the target's state carries (the framework's own session id), which a
    forked session keeps; the state comparison tells the fork from the turn that continues.
    """

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        self._entries: RecentMap[str, tuple[Mapping[str, Any], LiveT]] = RecentMap(max_sessions)

    def take(self, key: str | None, stored: Mapping[str, Any]) -> LiveT | None:
        """The object saved as ``stored`` under ``key``, or ``None`` (restore it then)."""
        entry = self._entries.pop(key) if key is not None else None
        if entry is None:
            return None
        saved, live = entry
        # The same object when the store kept the mapping it was given (memory); else a
        # comparison of two decoded JSON values, far cheaper than restoring the history.
        return live if saved is stored or saved == stored else None

    def keep(self, key: str | None, saved: Mapping[str, Any], live: LiveT) -> None:
        """``live`` ended a turn whose state to save is ``saved``; nothing else may change
        either afterwards."""
        if key is None:
            return
        self._entries.put(key, (saved, live))


class SerializedHistories:
    """``AgentSession.to_dict()`` for a session whose history only grows, reusing the saved
    form of the messages already saved.

    The framework serializes a session's whole state on every save, about 20 us a message
    (CPython 3.11): a conversation's hundredth turn would spend 4 ms serializing the 198
    messages before it. A history the framework keeps itself lies in the session state as
    ``state[source]["messages"]``, a list of ``Message`` (``InMemoryHistoryProvider``'s
    layout). The messages of such a list that are the very objects the last save of the
    same session serialized, at the same places, take the dicts serialized then; the rest
    of the state is serialized by the framework as before (``to_dict`` of a session that
    holds only the new messages, the saved dicts put back in front). A message list is
    serialized item by item, so the result is what ``to_dict`` answers; a session of
    another class than ``AgentSession`` is serialized by its own ``to_dict``. Like every
    saved state, the answer is read-only: later saves share its message dicts.
    """

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        # own session id -> state key -> (the messages serialized, their dicts)
        self._entries: RecentMap[str, dict[str, tuple[list[Any], list[Any]]]] = RecentMap(
            max_sessions
        )

    def to_dict(self, session: Any) -> dict[str, Any]:
        from agent_framework import AgentSession, Message

        if type(session) is not AgentSession:
            return dict(session.to_dict())
        kept = self._entries.pop(session.session_id) or {}
        state: dict[str, Any] = {}
        reused: dict[str, tuple[list[Any], list[Any]]] = {}
        for key, value in session.state.items():
            messages = value.get("messages") if type(value) is dict else None
            if type(messages) is list and all(type(m) is Message for m in messages):
                old_messages, old_dicts = kept.get(key, ([], []))
                same = 0
                for old, new in zip(old_messages, messages, strict=False):
                    if old is not new:
                        break
                    same += 1
                reused[key] = (list(messages), old_dicts[:same])
                value = {**value, "messages": messages[same:]}
            state[key] = value
        if not reused:
            return dict(session.to_dict())
        shell = AgentSession(
            session_id=session.session_id, service_session_id=session.service_session_id
        )
        shell.state = state
        result: dict[str, Any] = shell.to_dict()
        entry = {}
        for key, (messages, saved) in reused.items():
            holder = result["state"][key]
            holder["messages"] = [*saved, *holder["messages"]]
            entry[key] = (messages, holder["messages"])
        self._entries.put(session.session_id, entry)
        return result
