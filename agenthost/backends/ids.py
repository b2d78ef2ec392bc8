"""Identifiers the host mints: unique, unguessable, and in the order they were minted.

Almost every id the host mints becomes a row key in the store: a run's id names the session
it creates and the isolation key of an identity seen for the first time, a Responses id
keys the stored response, an Invocations session id keys its alias. A store keeps such keys
in B-tree indexes. Random keys put each new row on a random page of each index, so a
transaction saving a batch of new rows dirties one page per row per index, and every dirty
page is written again at commit (a WAL frame of the page's whole size, for SQLite).
Keys that begin with their creation time land next to the keys minted just before them: a
batch's new rows share an index's last pages (the idea of UUIDv7 and ULID).

:func:`ordered_hex` is the creation time in milliseconds (12 hex digits, in order until
the year 10889) followed by 128 random bits, as many as the ids carried before: knowing
when an id was minted does not make it easier to guess. Ids minted in the same millisecond
are in random order among themselves, which costs no locality.
"""

from __future__ import annotations

import os
import time

__all__ = ["ordered_hex"]


def ordered_hex(now: float | None = None) -> str:
    """44 lowercase hex digits: ``now`` (the wall clock by default) in milliseconds, then
    16 random bytes."""
    milliseconds = int((time.time() if now is None else now) * 1000)
    return f"{milliseconds:012x}{os.urandom(16).hex()}"
