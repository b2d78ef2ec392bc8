"""Session states as JSON text, decoded and encoded without walking a whole history per turn.

A session's state is saved on every turn and read back on the next, and for a target whose
history the host keeps it is the conversation so far: decoding it on each read and encoding
it on each write costs time in proportion to the conversation's length, for a turn that
changes two messages. :class:`SessionStates` keeps, for the most recent sessions of one
connection, the state last read or written, its text, and each top-level value's text:

- a read whose stored text is the text kept answers the state kept (the same object), so
  nothing is decoded, and a target that compares the state it is given with the one it
  saved finds the same object;
- a write encodes only what changed: a top-level list whose first items are the very
  items of the kept list (a history that grew) encodes only the items appended; every
  other value is encoded again.

What it produces is byte for byte what ``json.dumps(state, separators=(",", ":"),
allow_nan=False)`` produces (:func:`agenthost.stores.codec.to_state_json`), and it decides
nothing from what it keeps but which text to reuse: the stored text is always compared, so
a state another process saved, a write that was rolled back or an evicted entry costs a
full decode or encode, never a wrong answer. States are read-only once saved (the store
contract's ``Mapping``): a kept list whose length changed since is not reused.

:class:`KeptLeases` does the same for session leases, which a turn writes twice and reads
twice: a read of the text last written answers the (frozen) state written, undecoded.

Not thread-safe: one connection's work runs in one thread at a time.
"""

from __future__ import annotations

import json
import operator
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from agenthost.sansio_core import leases
from agenthost.stores import codec

DEFAULT_SESSIONS = 256

# The encoder of codec.to_state_json: ASCII-escaped, compact, no NaN.
_encode = codec.to_state_json


class _Kept:
    """One session's state, its text, and (once encoded here) each top-level value's text
    with the length its list had then."""

    __slots__ = ("parts", "state", "text")

    def __init__(
        self,
        state: Mapping[str, Any],
        text: str,
        parts: dict[str, tuple[Any, str, int]] | None,
    ) -> None:
        self.state = state
        self.text = text
        # key -> (value, its JSON text, its length if a list, else -1)
        self.parts = parts


class SessionStates:
    """A bounded, least-recently-used map from session id to its state and their texts."""

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        self._max_sessions = max_sessions
        self._kept: OrderedDict[str, _Kept] = OrderedDict()

    def decode(self, session_id: str, text: str) -> Mapping[str, Any]:
        """The state stored as ``text``."""
        kept = self._kept.get(session_id)
        if kept is not None and kept.text == text:
            self._kept.move_to_end(session_id)
            return kept.state
        state: Mapping[str, Any] = json.loads(text)
        self._keep(session_id, _Kept(state, text, None))
        return state

    def encode(self, session_id: str, state: Mapping[str, Any]) -> str:
        """``state`` as the text to store."""
        kept = self._kept.get(session_id)
        before = kept.parts if kept is not None and kept.parts is not None else {}
        text, parts = _encode_parts(state, before)
        self._keep(session_id, _Kept(state, text, parts))
        return text

    def forget(self, session_id: str) -> None:
        self._kept.pop(session_id, None)

    def _keep(self, session_id: str, kept: _Kept) -> None:
        self._kept[session_id] = kept
        self._kept.move_to_end(session_id)
        while len(self._kept) > self._max_sessions:
            self._kept.popitem(last=False)


def _encode_parts(
    state: Mapping[str, Any], before: Mapping[str, tuple[Any, str, int]]
) -> tuple[str, dict[str, tuple[Any, str, int]] | None]:
    """The text of ``state`` and of each of its values, reusing ``before``'s text of a list
    that grew from the same items."""
    if not isinstance(state, dict) or not all(type(key) is str for key in state):
        return _encode(state), None  # not the shape kept in parts: no reuse next time
    parts: dict[str, tuple[Any, str, int]] = {}
    pieces = []
    for key, value in state.items():
        size = len(value) if type(value) is list else -1
        old = before.get(key)
        text = None
        if old is not None and size > 0:
            old_value, old_text, old_size = old
            if (
                size >= old_size > 0
                and len(old_value) == old_size  # nobody changed the kept list since
                and all(map(operator.is_, old_value, value))
            ):
                added = value[old_size:]
                text = f"{old_text[:-1]},{_encode(added)[1:]}" if added else old_text
        if text is None:
            text = _encode(value)
        parts[key] = (value, text, size)
        pieces.append(f"{_encode(key)}:{text}")
    return "{" + ",".join(pieces) + "}", parts


class KeptLeases:
    """A bounded, least-recently-used map from session id to the lease last read or
    written and its text."""

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        self._max_sessions = max_sessions
        self._kept: OrderedDict[str, tuple[str, leases.LeaseState]] = OrderedDict()

    def decode(self, session_id: str, text: str) -> leases.LeaseState:
        """The lease stored as ``text``."""
        kept = self._kept.get(session_id)
        if kept is not None and kept[0] == text:
            self._kept.move_to_end(session_id)
            return kept[1]
        state = codec.load_lease(text)
        self._keep(session_id, text, state)
        return state

    def encode(self, session_id: str, state: leases.LeaseState) -> str:
        """``state`` as the text to store."""
        text = codec.dump_lease(state)
        self._keep(session_id, text, state)
        return text

    def last(self, session_id: str) -> tuple[str, leases.LeaseState] | None:
        """The text last read or written for the session's lease and its state, if kept:
        what the store held then, not necessarily what it holds now."""
        return self._kept.get(session_id)

    def _keep(self, session_id: str, text: str, state: leases.LeaseState) -> None:
        self._kept[session_id] = (text, state)
        self._kept.move_to_end(session_id)
        while len(self._kept) > self._max_sessions:
            self._kept.popitem(last=False)
