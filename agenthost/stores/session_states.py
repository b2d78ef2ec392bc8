"""Session states stored as a head and appended tails, so a turn writes what it added.

A session's state is saved on every turn and read back on the next, and for a target whose
history the host keeps it is the conversation so far, to which a turn adds two messages.
Saved whole, every turn would encode and write the whole conversation again, a cost that
grows with its length. The SQLite store keeps a state in two parts instead:

- the *head*, the session row's ``state`` column: the state's JSON with its long lists
  (reached through objects only, at least :data:`SPLIT_ITEMS` items) left empty;
- the *tails*, rows of ``session_state_tails`` in order: items to append to the list at a
  path of keys.

A state reads back as its head with each tail's items appended to its list. A save whose
long lists only grew (their first items equal to those saved before, then more) writes the
head, now small, and one tail row per list that grew; a list that grows long moves to a
tail whole. The save that would pass :data:`MAX_TAILS` rows joins the rows into one per
list from their stored texts (nothing is encoded again), so a read never joins more than
:data:`MAX_TAILS` rows. Any other save writes the whole state again as a head and one tail
row per long list.

Every save writes a new *tag* into the row, unique to the connection and the save. A
:class:`SessionStates` keeps, for the most recent sessions of one connection, the state last
read or written with its tag and layout:

- a read of a row holding the kept tag answers the kept state (the same object), so nothing
  is decoded and the tails are not read;
- a save that builds on the stored tails is written as a conditional update (the row must
  still hold the kept tag): when another process saved the session since, or the save
  that wrote the kept tag was rolled back, the update finds no row and the state is
  written whole.

Nothing kept is trusted without its tag: an evicted entry, another process's save or a lost
write costs a full decode or a full write, never a wrong answer. States are read-only once
saved (the store contract's ``Mapping``): a kept list whose length changed since is not
appended to.

:class:`KeptLeases` does the same for session leases, which a turn writes twice and reads
twice: a read of the text last written answers the (frozen) state written, undecoded.

Not thread-safe: one connection's work runs in one thread at a time.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agenthost.recent import RecentMap
from agenthost.sansio_core import leases
from agenthost.stores import codec

DEFAULT_SESSIONS = 256
# A list this long is kept in tails (a conversation after a few turns); shorter ones stay in
# the head, where a save encodes them again.
SPLIT_ITEMS = 8
# A save that would leave more tail rows than this joins them into one a list: a read that
# misses the kept state joins at most this many rows, and a save copies the whole state's
# text (without encoding it) once in about this many turns.
MAX_TAILS = 32
# Lists deeper than this many keys are part of the head (an Agent Framework session keeps its
# messages three keys down).
MAX_DEPTH = 6

Path = tuple[str, ...]
# A tailed list's path -> (how many of its items the head holds, how many it has in all,
# the path as JSON)
Tailed = dict[Path, tuple[int, int, str]]
# A tail row as stored: (path JSON, items JSON)
TailRow = tuple[str, str]

# The encoder of codec.to_state_json (compact, keys in the state's order, no NaN).
_encode = codec.to_state_json
_MISSING = object()


class StateWrite:
    """What one save writes: the row's ``head`` and ``tag``, and the tail rows ``rows`` are
    then (their number is the row's ``state_tails``); the rows from ``first`` on are
    inserted, after every tail row is deleted when ``rewrite``.

    ``replaces`` is the tag the row must hold for this write to apply (a save that builds
    on the stored tails); ``None`` for a save of the whole state.
    """

    __slots__ = ("first", "head", "layout", "replaces", "rewrite", "rows", "state", "tag")

    def __init__(
        self,
        state: Mapping[str, Any],
        head: str,
        tag: str,
        rows: list[TailRow],
        first: int,
        replaces: str | None,
        rewrite: bool,
        layout: Tailed,
    ) -> None:
        self.state = state
        self.head = head
        self.tag = tag
        self.rows = rows
        self.first = first
        self.replaces = replaces
        self.rewrite = rewrite
        self.layout = layout

    @property
    def tails(self) -> list[tuple[int, str, str]]:
        """The tail rows to insert, ``(seq, path JSON, items JSON)``."""
        return [
            (seq, path, items)
            for seq, (path, items) in enumerate(self.rows[self.first :], self.first)
        ]


class _Kept:
    """One session's state as last read or written, with the tag and layout stored."""

    __slots__ = ("rows", "state", "tag", "tailed")

    def __init__(
        self, state: Mapping[str, Any], tag: str, rows: list[TailRow], tailed: Tailed
    ) -> None:
        self.state = state
        self.tag = tag
        self.rows = rows
        self.tailed = tailed


class SessionStates:
    """A bounded, least-recently-used map from session id to its state as stored."""

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        self._kept: RecentMap[str, _Kept] = RecentMap(max_sessions)
        # Tags: random per connection (other processes share the file), counted per save.
        self._tag_prefix = secrets.token_hex(8)
        self._saves = itertools.count(1)

    def read(
        self,
        session_id: str,
        head: str,
        tag: str | None,
        tail_rows: Callable[[], Iterable[TailRow]],
    ) -> Mapping[str, Any]:
        """The state stored as ``head`` under ``tag``; ``tail_rows`` answers its tails, in
        order, and is called only when the state is not kept."""
        kept = self._kept.get(session_id)
        if kept is not None and tag is not None and kept.tag == tag:
            return kept.state
        rows = list(tail_rows())
        state: Mapping[str, Any]
        state, tailed = _assemble(head, rows)
        if tag is None:  # saved before tags (schema 3): its next save writes it whole
            self._kept.pop(session_id)
        else:
            self._kept.put(session_id, _Kept(state, tag, rows, tailed))
        return state

    def plan(self, session_id: str, state: Mapping[str, Any]) -> StateWrite:
        """How to save ``state``: on the kept layout when its long lists only grew, else
        whole."""
        kept = self._kept.get(session_id)
        if kept is not None:
            write = _appending(kept, state, self._new_tag())
            if write is not None:
                return write
        return self.plan_whole(state)

    def plan_whole(self, state: Mapping[str, Any]) -> StateWrite:
        """A save of the whole ``state``: its head and a tail row per long list."""
        lists: list[tuple[Path, list[Any]]] = []
        tailed: Tailed = {}
        if type(state) is dict and _string_keys(state):
            head = _encode(_split_object(state, (), lists, tailed))
        else:
            head = _encode(state)  # not a shape with paths: no tails
        rows = [(tailed[path][2], _encode(items)) for path, items in lists]
        return StateWrite(state, head, self._new_tag(), rows, 0, None, True, tailed)

    def saved(self, session_id: str, write: StateWrite) -> None:
        """``write`` was made (in a transaction not yet committed: the tag decides later)."""
        self._kept.put(session_id, _Kept(write.state, write.tag, write.rows, write.layout))

    def forget(self, session_id: str) -> None:
        self._kept.pop(session_id)

    def _new_tag(self) -> str:
        return f"{self._tag_prefix}{next(self._saves):x}"


def assemble(head: str, rows: Iterable[TailRow]) -> Any:
    """The state stored as ``head`` and tail ``rows``."""
    return _assemble(head, rows)[0]


def _assemble(head: str, rows: Iterable[TailRow]) -> tuple[Any, Tailed]:
    state = json.loads(head)
    heads: dict[Path, tuple[int, str]] = {}
    for path_text, items_text in rows:
        path = tuple(json.loads(path_text))
        target = _at(state, path)
        if type(target) is not list:
            raise ValueError(f"a stored session state has a tail for {path!r}, not a list")
        heads.setdefault(path, (len(target), path_text))
        target.extend(json.loads(items_text))
    return state, {
        path: (held, len(_at(state, path)), text) for path, (held, text) in heads.items()
    }


def _appending(kept: _Kept, state: Mapping[str, Any], tag: str) -> StateWrite | None:
    """``state`` saved on ``kept``'s layout: its tails and one more per list that grew,
    merged into one per list when that would pass MAX_TAILS; or ``None`` when a long list
    did not only grow."""
    if type(state) is not dict or type(kept.state) is not dict or not _string_keys(state):
        return None
    tailed = dict(kept.tailed)
    appends: list[tuple[Path, list[Any]]] = []
    seen = _grown_object(kept.state, state, (), tailed, appends)
    if seen is None or seen != len(kept.tailed):  # a tailed list is gone or was replaced
        return None
    head = _encode(_head_of(state, tailed))
    added = [(tailed[path][2], _encode(items)) for path, items in appends]
    rows = [*kept.rows, *added]
    if len(rows) <= MAX_TAILS:
        return StateWrite(state, head, tag, rows, len(kept.rows), kept.tag, False, tailed)
    # One row per list, joined from the texts stored: nothing is encoded again.
    texts: dict[str, list[str]] = {}
    for path, items in rows:
        texts.setdefault(path, []).append(items[1:-1])
    rows = [(path, f"[{','.join(parts)}]") for path, parts in texts.items()]
    return StateWrite(state, head, tag, rows, 0, kept.tag, True, tailed)


def _grown_object(
    old: Any,
    new: dict[str, Any],
    path: Path,
    tailed: Tailed,
    appends: list[tuple[Path, list[Any]]],
) -> int | None:
    """Walk ``new``'s lists under ``path``: record what each tailed or long list appended
    (updating ``tailed``) and answer how many tailed lists were found, or ``None`` when one
    did not only grow."""
    seen = 0
    for key, value in new.items():
        at = (*path, key)
        kind = type(value)
        if kind is dict:
            if len(at) < MAX_DEPTH and _string_keys(value):
                before = old.get(key, _MISSING) if type(old) is dict else _MISSING
                found = _grown_object(before, value, at, tailed, appends)
                if found is None:
                    return None
                seen += found
            continue
        layout = tailed.get(at)
        if layout is None and (kind is not list or len(value) < SPLIT_ITEMS):
            continue  # part of the head
        before = old.get(key, _MISSING) if type(old) is dict else _MISSING
        if kind is not list or type(before) is not list:
            return None
        size = len(before)
        # Equal, not identical: a list == compares identical items at a pointer's cost,
        # and a target may rebuild equal items; JSON values that compare equal read back
        # equal (True and 1, 1 and 1.0, objects in another key order).
        if len(value) < size or before != (value[:size] if len(value) > size else value):
            return None
        if layout is not None:
            held, stored, text = layout
            if size != stored:  # the kept list changed after it was saved
                return None
            seen += 1
            if len(value) > size:
                appends.append((at, value[size:]))
        elif len(value) > size:
            # A list that grew long moves to a tail whole: the head, written by every save,
            # stays small.
            held, text = 0, _encode(list(at))
            appends.append((at, value))
        else:
            continue  # long, unchanged, still in the head: it stays there
        tailed[at] = (held, len(value), text)
    return seen


def _split_object(
    value: dict[str, Any], path: Path, tails: list[tuple[Path, list[Any]]], tailed: Tailed
) -> dict[str, Any]:
    """``value`` with its long lists emptied into ``tails`` (the same object when none)."""
    copied: dict[str, Any] | None = None
    for key, item in value.items():
        kind = type(item)
        at = (*path, key)
        if kind is list and len(item) >= SPLIT_ITEMS:
            tails.append((at, item))
            tailed[at] = (0, len(item), _encode(list(at)))
            replacement: Any = []
        elif kind is dict and len(at) < MAX_DEPTH and _string_keys(item):
            replacement = _split_object(item, at, tails, tailed)
            if replacement is item:
                continue
        else:
            continue
        if copied is None:
            copied = dict(value)
        copied[key] = replacement
    return value if copied is None else copied


def _head_of(state: dict[str, Any], tailed: Tailed) -> dict[str, Any]:
    """``state`` with each tailed list cut to the items its head holds."""
    if not tailed:
        return state
    head = dict(state)
    for path, (held, _, _) in tailed.items():
        holder = head
        for key in path[:-1]:
            holder[key] = dict(holder[key])  # copied, not changed: the state is read-only
            holder = holder[key]
        holder[path[-1]] = holder[path[-1]][:held]
    return head


def _at(value: Any, path: Path) -> Any:
    for key in path:
        if type(value) is not dict:
            return _MISSING
        value = value.get(key, _MISSING)
    return value


def _string_keys(value: dict[Any, Any]) -> bool:
    return all(type(key) is str for key in value)


class KeptLeases:
    """A bounded, least-recently-used map from session id to the lease last read or
    written and its text."""

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        self._kept: RecentMap[str, tuple[str, leases.LeaseState]] = RecentMap(max_sessions)

    def decode(self, session_id: str, text: str) -> leases.LeaseState:
        """The lease stored as ``text``."""
        kept = self._kept.get(session_id)
        if kept is not None and kept[0] == text:
            return kept[1]
        state = codec.load_lease(text)
        self._kept.put(session_id, (text, state))
        return state

    def encode(self, session_id: str, state: leases.LeaseState) -> str:
        """``state`` as the text to store."""
        text = codec.dump_lease(state)
        self._kept.put(session_id, (text, state))
        return text

    def last(self, session_id: str) -> tuple[str, leases.LeaseState] | None:
        """The text last read or written for the session's lease and its state, if kept:
        what the store held then, not necessarily what it holds now."""
        return self._kept.peek(session_id)
