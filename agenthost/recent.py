"""A map that keeps only its most recently used entries.

The caches that spare a turn work its session's last turn already did (converted
histories, live agent sessions, stored state and lease texts) each keep a bounded number of
sessions and forget the least recently used first; this is that one rule, written once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentMap(Generic[K, V]):
    """A map of at most ``max_entries`` entries that forgets the least recently used one
    when another is put. Values are never ``None`` (a miss answers ``None``)."""

    __slots__ = ("_entries", "_max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value under ``key``, now the most recently used, or ``None``."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The value under ``key``, or ``None``, leaving the order as it is."""
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the most recently used entry."""
        entries = self._entries
        entries[key] = value
        entries.move_to_end(key)
        if len(entries) > self._max_entries:  # one put adds at most one entry
            entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        """Remove and answer the value under ``key``, or ``None``."""
        return self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """The keys, the least recently used first."""
        return iter(self._entries)
