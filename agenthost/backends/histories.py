"""The host-message form of recent sessions' histories, kept between turns.

A plain async target gets its whole conversation on every turn, but a session's stored
history only grows: converting all of it from its stored form each turn costs time in
proportion to the conversation's length. This cache keeps, for the most recent sessions of
this process, the converted messages and what they were converted from, so a turn converts
only what was appended since. It is checked, never trusted: a stored history that does not
extend the cached one (another replica rewrote it, a save was lost) is converted in full.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from agenthost.sansio_core.types import HostMessage
from agenthost.stores.codec import structure_messages

DEFAULT_SESSIONS = 256


class ConvertedHistories:
    """A bounded, least-recently-used map from session id to its converted history."""

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        self._max_sessions = max_sessions
        # session id -> (how many stored messages were converted, the last of them, messages)
        self._entries: OrderedDict[str, tuple[int, Any, tuple[HostMessage, ...]]] = OrderedDict()

    def messages(
        self, session_id: str | None, stored: Sequence[Mapping[str, Any]]
    ) -> list[HostMessage]:
        """The history ``stored`` (the session's stored form) as host messages."""
        entry = self._entries.get(session_id) if session_id is not None else None
        if entry is not None:
            count, last, converted = entry
            if count <= len(stored) and (count == 0 or stored[count - 1] == last):
                self._entries.move_to_end(session_id)  # type: ignore[arg-type]
                return [*converted, *structure_messages(stored[count:])]
        return structure_messages(stored)

    def remember(
        self,
        session_id: str | None,
        stored: Sequence[Mapping[str, Any]],
        messages: Sequence[HostMessage],
    ) -> None:
        """``messages`` is ``stored`` converted: the history a successful turn saves."""
        if session_id is None or len(stored) != len(messages):
            return
        self._entries[session_id] = (len(stored), stored[-1] if stored else None, tuple(messages))
        self._entries.move_to_end(session_id)
        while len(self._entries) > self._max_sessions:
            self._entries.popitem(last=False)
