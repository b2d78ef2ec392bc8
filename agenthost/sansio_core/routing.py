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
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from agenthost.sansio_core.types import ChannelIdentity, ResponseTarget, TargetKind


@attrs.frozen
class Destination:
    channel: str
    identity: ChannelIdentity
    conversation_id: str | None


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


@attrs.frozen
class Dropped:
    channel: str
    identity: ChannelIdentity | None
    reason: DropReason


@attrs.frozen
class Routing:
    """The decision: where to push, what was dropped and why, and whether it fell back."""

    destinations: tuple[Destination, ...]
    dropped: tuple[Dropped, ...] = ()
    originating_only: bool = False  # the originating wire carries the answer
    fell_back: bool = False  # a push target ended empty and fell back to originating


LinkAllowed = Callable[[str, str], bool]  # (originating channel, destination channel)


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
    if target.kind is TargetKind.ORIGINATING:
        return Routing((originating,), originating_only=True)
    if target.kind is TargetKind.NONE:
        return Routing(())

    newest_first = sorted(last_seen, key=lambda s: (-s.seen_at, s.channel, s.identity.native_id))
    owned = {originating.identity, *linked, *(s.identity for s in last_seen)}
    candidates, dropped = _candidates(target, newest_first, owned, originating, can_push)

    kept: list[Destination] = []
    seen_pairs: set[tuple[str, ChannelIdentity]] = set()
    for candidate in candidates:
        reason = _drop_reason(candidate, originating, can_push, link_allowed)
        if reason is not None:
            dropped.append(Dropped(candidate.channel, candidate.identity, reason))
            continue
        pair = (candidate.channel, candidate.identity)
        if pair not in seen_pairs:
            seen_pairs.add(pair)
            kept.append(candidate)
        if target.kind is TargetKind.ACTIVE:
            break  # the most recent channel that can reach the user
    if not kept:
        return Routing((originating,), tuple(dropped), originating_only=True, fell_back=True)
    return Routing(tuple(kept), tuple(dropped))


def _candidates(
    target: ResponseTarget,
    newest_first: Sequence[LastSeen],
    owned: set[ChannelIdentity],
    originating: Destination,
    can_push: Mapping[str, bool],
) -> tuple[list[Destination], list[Dropped]]:
    dropped: list[Dropped] = []
    if target.kind is TargetKind.ACTIVE:
        # Newest first; the caller keeps the first that can reach the user. Never seen
        # anywhere: nothing to choose, so the routing falls back to originating.
        return [_destination(s) for s in newest_first], dropped

    if target.kind is TargetKind.CHANNELS:
        found = []
        for name in target.channels:
            latest = next((s for s in newest_first if s.channel == name), None)
            if latest is None and name not in can_push:
                # a name the host has no channel for (a typo): say so, not "never seen"
                dropped.append(Dropped(name, None, DropReason.UNKNOWN_CHANNEL))
            elif latest is None:
                dropped.append(Dropped(name, None, DropReason.NEVER_SEEN))
            else:
                found.append(_destination(latest))
        return found, dropped

    if target.kind is TargetKind.IDENTITIES:
        found = []
        for identity in target.identities:
            if identity not in owned:
                dropped.append(Dropped(identity.channel, identity, DropReason.NOT_OWNED))
                continue
            latest = next((s for s in newest_first if s.identity == identity), None)
            if latest is None:
                dropped.append(Dropped(identity.channel, identity, DropReason.NEVER_SEEN))
            else:
                found.append(_destination(latest))
        return found, dropped

    # ALL_LINKED: one destination per channel, the most recent conversation on it.
    found = []
    channels_done: set[str] = set()
    for seen in newest_first:
        if seen.channel not in channels_done and seen.identity in owned:
            channels_done.add(seen.channel)
            found.append(_destination(seen))
    for identity in sorted(owned, key=lambda i: (i.channel, i.native_id)):
        if identity.channel not in channels_done:
            channels_done.add(identity.channel)
            dropped.append(Dropped(identity.channel, identity, DropReason.NEVER_SEEN))
    return found, dropped


def _destination(seen: LastSeen) -> Destination:
    return Destination(seen.channel, seen.identity, seen.conversation_id)


def _drop_reason(
    candidate: Destination,
    originating: Destination,
    can_push: Mapping[str, bool],
    link_allowed: LinkAllowed,
) -> DropReason | None:
    if candidate.channel not in can_push:
        return DropReason.UNKNOWN_CHANNEL
    if not can_push[candidate.channel]:
        return DropReason.CANNOT_PUSH
    if candidate.channel != originating.channel and not link_allowed(
        originating.channel, candidate.channel
    ):
        return DropReason.LINK_POLICY
    return None
