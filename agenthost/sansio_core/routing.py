"""Response routing: from a ``ResponseTarget`` to the destinations a reply is pushed to.

Rules:

1. ``originating`` answers on the wire the request came in on; nothing is pushed.
2. ``none`` delivers nowhere; the result stays available to poll.
3. The other targets name destinations among the user's own identities only: the ones
   linked to the isolation key and the ones seen with it. An identity the user does not
   own is dropped, so no target can push into somebody else's chat.
4. ``active`` is the channel the user was seen on last among those that can reach them
   (that can push and that the link policy allows): a user last seen on a channel that
   cannot push (Invocations, Responses) is reached on the one seen before it, and the
   newer ones are listed as dropped with their reason; ``channel``/``channels`` take the
   user's most recent conversation on each named channel, in the order named;
   ``identities`` takes each named identity's most recent conversation; ``all_linked``
   takes one destination per channel the user has an identity on, most recent first.
5. A destination is dropped, with a reason, when its channel cannot push, when the link
   policy forbids carrying this conversation from the originating channel to it, or when
   the user has never been seen there (there is no conversation to push into). A push
   within the originating channel crosses no link, so the policy is not asked.
6. Each ``(channel, identity)`` appears at most once. If nothing is left, the reply falls
   back to the originating destination.

Pure: what the user was seen on, what is linked, what each channel can do and the link
policy all come in as arguments.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from agenthost.sansio_core.types import ChannelIdentity, ResponseTarget, TargetKind
from agenthost.sansio_core.values import builder, builds_fast


@builds_fast
@attrs.frozen
class Destination:
    channel: str
    identity: ChannelIdentity
    conversation_id: str | None


@builds_fast
@attrs.frozen
class LastSeen:
    """The most recent time an identity of the user spoke in one conversation."""

    channel: str
    identity: ChannelIdentity
    conversation_id: str | None
    seen_at: float


class DropReason(enum.Enum):
    CANNOT_PUSH = "channel_cannot_push"
    LINK_POLICY = "forbidden_by_link_policy"
    NEVER_SEEN = "never_seen_there"
    NOT_OWNED = "identity_not_owned_by_user"
    UNKNOWN_CHANNEL = "unknown_channel"


@builds_fast
@attrs.frozen
class Dropped:
    channel: str
    identity: ChannelIdentity | None
    reason: DropReason


@builds_fast
@attrs.frozen
class Routing:
    """The decision: where to push, what was dropped and why, and whether it fell back."""

    destinations: tuple[Destination, ...]
    dropped: tuple[Dropped, ...] = ()
    originating_only: bool = False  # the originating wire carries the answer
    fell_back: bool = False  # a push target ended empty and fell back to originating


LinkAllowed = Callable[[str, str], bool]  # (originating channel, destination channel)

# Enum members as module constants for the decision below: ``TargetKind.ACTIVE`` goes
# through the enum's metaclass, about ten times the cost of a global (CPython 3.11), and a
# decision reads a dozen of them.
_ORIGINATING, _NONE, _ACTIVE = TargetKind.ORIGINATING, TargetKind.NONE, TargetKind.ACTIVE
_ALL_LINKED, _CHANNELS, _IDENTITIES = (
    TargetKind.ALL_LINKED,
    TargetKind.CHANNELS,
    TargetKind.IDENTITIES,
)
_UNKNOWN_CHANNEL, _CANNOT_PUSH, _LINK_POLICY = (
    DropReason.UNKNOWN_CHANNEL,
    DropReason.CANNOT_PUSH,
    DropReason.LINK_POLICY,
)

# Built for every destination of every decision: without the trip through ``type.__call__``.
_destination = builder(Destination)
_dropped = builder(Dropped)
_routing = builder(Routing)


def resolve_destinations(
    target: ResponseTarget,
    *,
    originating: Destination,
    last_seen: Sequence[LastSeen],
    linked: Iterable[ChannelIdentity],
    can_push: Mapping[str, bool],
    link_allowed: LinkAllowed,
) -> Routing:
    """Decide where a reply goes (see the module rules)."""
    kind = target.kind
    if kind is _ORIGINATING:
        return Routing((originating,), originating_only=True)
    if kind is _NONE:
        return Routing(())

    newest_first = _newest_first(last_seen)
    dropped: list[Dropped] = []
    if kind is _ACTIVE:
        # every sighting, newest first: the loop below keeps the first that can reach the
        # user; never seen anywhere, the routing falls back to originating
        candidates: Iterable[LastSeen] = newest_first
    elif kind is _ALL_LINKED:
        candidates = _all_linked(newest_first, originating, linked, dropped)
    elif kind is _CHANNELS:
        candidates = _named_channels(target.channels, newest_first, can_push, dropped)
    else:
        candidates = _named_identities(target, newest_first, originating, linked, dropped)

    kept: list[Destination] = []
    # A channel or identity named twice is pushed once; the other kinds name each
    # (channel, identity) once already, and so do channels named once each (each name's
    # sighting is on that channel). Pairs are compared by the plain strings
    # ChannelIdentity's equality is made of.
    dedupe = kind is _IDENTITIES or (
        kind is _CHANNELS and len(set(target.channels)) < len(target.channels)
    )
    kept_pairs: set[tuple[str, str, str]] = set()
    origin = originating.channel
    pushes_on = can_push.get  # bound once: this loop is the routing's hot path
    for seen in candidates:
        channel = seen.channel
        # rule 5, inline
        pushes = pushes_on(channel)
        if pushes is None:
            reason = _UNKNOWN_CHANNEL
        elif not pushes:
            reason = _CANNOT_PUSH
        elif channel != origin and not link_allowed(origin, channel):
            reason = _LINK_POLICY
        else:
            if dedupe:
                pair = (channel, seen.identity.channel, seen.identity.native_id)
                if pair in kept_pairs:
                    continue
                kept_pairs.add(pair)
            kept.append(_destination(channel, seen.identity, seen.conversation_id))
            if kind is _ACTIVE:
                break  # the most recent channel that can reach the user
            continue
        dropped.append(_dropped(channel, seen.identity, reason))
    if not kept:
        return Routing((originating,), tuple(dropped), originating_only=True, fell_back=True)
    return _routing(tuple(kept), tuple(dropped))


_BY_NAME = operator.attrgetter("channel", "identity.native_id")
_BY_TIME = operator.attrgetter("seen_at")


def _newest_first(last_seen: Sequence[LastSeen]) -> list[LastSeen]:
    """Most recent first; equal times by channel, then native id, so ties always resolve
    the same way. Sorted on plain attributes (no Python key function per item), and by
    name only when two times are equal, which is rare."""
    newest_first = sorted(last_seen, key=_BY_TIME, reverse=True)
    # Sorted, equal times are neighbours: one pass of plain attribute reads finds them,
    # for about half what a set of the times costs (an attrgetter call and a hash each).
    previous = None
    for seen in newest_first:
        if seen.seen_at == previous:
            # stable sorts: by name first, so the time sort keeps that order among equals
            return sorted(sorted(last_seen, key=_BY_NAME), key=_BY_TIME, reverse=True)
        previous = seen.seen_at
    return newest_first


def _identity_key(identity: ChannelIdentity) -> tuple[str, str]:
    # What ChannelIdentity's equality compares; hashing these strings is cheaper than
    # hashing the identity itself.
    return (identity.channel, identity.native_id)


def _all_linked(
    newest_first: Sequence[LastSeen],
    originating: Destination,
    linked: Iterable[ChannelIdentity],
    dropped: list[Dropped],
) -> list[LastSeen]:
    """One sighting per channel, the most recent; a channel the user owns an identity on but
    was never seen on is dropped. Every seen identity is the user's own (rule 3)."""
    found: list[LastSeen] = []
    channels_done: set[str] = set()
    for seen in newest_first:
        channel = seen.channel
        if channel not in channels_done:
            channels_done.add(channel)
            found.append(seen)
    # Only identities never seen can be on a channel not done yet; the first of equal ones
    # stands for them all, as a set of identities would keep it.
    unseen: dict[tuple[str, str], ChannelIdentity] = {}
    for identity in (originating.identity, *linked):
        if identity.channel not in channels_done:
            unseen.setdefault(_identity_key(identity), identity)
    for key in sorted(unseen) if unseen else ():
        identity = unseen[key]
        if identity.channel not in channels_done:
            channels_done.add(identity.channel)
            dropped.append(Dropped(identity.channel, identity, DropReason.NEVER_SEEN))
    return found


def _named_channels(
    names: Sequence[str],
    newest_first: Sequence[LastSeen],
    can_push: Mapping[str, bool],
    dropped: list[Dropped],
) -> list[LastSeen]:
    """The most recent sighting on each named channel, in the order named."""
    # the newest sighting per channel: iterated oldest first, the newest is written last
    latest = {seen.channel: seen for seen in reversed(newest_first)}
    found = []
    for name in names:
        seen = latest.get(name)
        if seen is None and name not in can_push:
            # a name the host has no channel for (a typo): say so, not "never seen"
            dropped.append(Dropped(name, None, DropReason.UNKNOWN_CHANNEL))
        elif seen is None:
            dropped.append(Dropped(name, None, DropReason.NEVER_SEEN))
        else:
            found.append(seen)
    return found


def _named_identities(
    target: ResponseTarget,
    newest_first: Sequence[LastSeen],
    originating: Destination,
    linked: Iterable[ChannelIdentity],
    dropped: list[Dropped],
) -> list[LastSeen]:
    """The most recent sighting of each named identity the user owns, in the order named."""
    latest = {_identity_key(seen.identity): seen for seen in reversed(newest_first)}
    owned = {_identity_key(originating.identity), *map(_identity_key, linked), *latest}
    found = []
    for identity in target.identities:
        key = _identity_key(identity)
        if key not in owned:
            dropped.append(Dropped(identity.channel, identity, DropReason.NOT_OWNED))
            continue
        seen = latest.get(key)
        if seen is None:
            dropped.append(Dropped(identity.channel, identity, DropReason.NEVER_SEEN))
        else:
            found.append(seen)
    return found
