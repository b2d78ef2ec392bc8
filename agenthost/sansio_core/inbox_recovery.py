"""Who takes over the durable inbox's records: the recovery rules, without any I/O.

The push-style channels (Telegram, Discord, Bot Framework activities) record each arrival
in an inbox before acknowledging it (``backends/inbox.py`` performs that and handles the
arrivals). This module owns what recovery decides about those records; the backend only
lists them, takes and gives up leases and applies the compare-and-set it is told to.

Rules (design §8; everything recovery decides lives in this file):

1. Each inbox record names the process that recorded it (its *owner*), and each process
   holds a lease on its name (a store singleton, ``inbox:<channel>:<owner>``, renewed every
   third of the lease time) while it runs.
2. A recovery considers only *candidates*: records neither this process's own nor known
   here (being recorded, queued or handled in this process).
3. An owner counts as *gone* when this process can take its lease (it lapsed: the owner
   died, stopped or was cut off from the store for a whole lease). The lease is held for
   the moment of the take-over only, then given up. A record without an owner (written
   before owners existed) counts as gone without a lease to take.
4. The candidates of gone owners are taken in key order (keys sort in arrival order, so
   each lane keeps its order), skipping a key that became known here meanwhile. A live
   owner's records are never taken.
5. Each take is a compare-and-set: the record moves to this process only if, as it is
   now, it still belongs to the owner it was listed with. A record handled meanwhile
   (deleted) or already taken by another replica (or by an earlier take here) is left
   alone, so of replicas recovering at once each record goes to exactly one.

Every replica recovers at start and at each renewal of its own lease, so what a dead
replica left is handled by the others without waiting for its restart. Only a process
frozen past its lease can see its arrivals handled again elsewhere: at least once, never
lost.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Set

import attrs


@attrs.frozen
class InboxEntry:
    """What recovery needs of one inbox record: its key and the process that owns it."""

    key: str
    owner: str | None


@attrs.frozen
class RecoveryPlan:
    """The candidates of one recovery (rule 2) and the owners whose leases to try (rule 3).

    ``candidates`` are in key order; ``leases_to_try`` holds each distinct owner once, in
    sorted order, and never ``None`` (a record without an owner has no lease).
    """

    candidates: tuple[InboxEntry, ...]
    leases_to_try: tuple[str, ...]


def plan_recovery(entries: Iterable[InboxEntry], *, me: str, known: Container[str]) -> RecoveryPlan:
    """Choose the candidates among the listed ``entries`` and the leases to try for them."""
    candidates = tuple(
        sorted(
            (e for e in entries if e.owner != me and e.key not in known),
            key=lambda entry: entry.key,
        )
    )
    owners = sorted({e.owner for e in candidates if e.owner is not None})
    return RecoveryPlan(candidates, tuple(owners))


def to_take(
    candidates: Iterable[InboxEntry], *, gone: Set[str], known: Container[str]
) -> Iterator[InboxEntry]:
    """The candidates to move to this process, in key order (rule 4).

    ``gone`` holds the owners whose lease this process took. It yields lazily and reads
    ``known`` at each step, so a key that becomes known here while the caller moves an
    earlier record (a concurrent recovery, a redelivery) is skipped.
    """
    for entry in sorted(candidates, key=lambda entry: entry.key):
        owner_gone = entry.owner is None or entry.owner in gone
        if owner_gone and entry.key not in known:
            yield entry


def may_move(listed: InboxEntry, current: InboxEntry | None) -> bool:
    """The compare-and-set of one take (rule 5): whether the record, as it is now
    (``current``; ``None`` when it is gone), still belongs to the owner it was listed with.
    """
    return current is not None and current.key == listed.key and current.owner == listed.owner
