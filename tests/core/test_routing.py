"""Response routing: each target kind, drops and their reasons, and random users."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core.routing import (
    Destination,
    Dropped,
    DropReason,
    LastSeen,
    LinkAllowed,
    Routing,
    resolve_destinations,
)
from agenthost.sansio_core.types import ChannelIdentity, ResponseTarget, TargetKind

# The user called over the Responses API (which cannot push) and has Telegram, Teams and
# Slack identities; Slack is linked but the user never spoke there.
API = ChannelIdentity("responses", "user@example.com")
TG = ChannelIdentity("telegram", "42")
TEAMS = ChannelIdentity("teams", "aad-7")
SLACK = ChannelIdentity("slack", "U01")
STRANGER = ChannelIdentity("telegram", "666")

ORIGIN = Destination("responses", API, None)
TG_DM = LastSeen("telegram", TG, "dm_42", 50.0)
TG_GROUP = LastSeen("telegram", TG, "group_9", 80.0)
TEAMS_CHAT = LastSeen("teams", TEAMS, "19:chat", 90.0)
API_SEEN = LastSeen("responses", API, None, 10.0)
LAST_SEEN = (TG_DM, TEAMS_CHAT, TG_GROUP, API_SEEN)
LINKED = (API, TG, TEAMS, SLACK)
CAN_PUSH = {"responses": False, "telegram": True, "teams": True, "slack": True}


def allow_all(origin: str, destination: str) -> bool:
    return True


def route(
    target: ResponseTarget,
    *,
    originating: Destination = ORIGIN,
    last_seen: Sequence[LastSeen] = LAST_SEEN,
    linked: Iterable[ChannelIdentity] = LINKED,
    can_push: Mapping[str, bool] = CAN_PUSH,
    link_allowed: LinkAllowed = allow_all,
) -> Routing:
    return resolve_destinations(
        target,
        originating=originating,
        last_seen=last_seen,
        linked=linked,
        can_push=can_push,
        link_allowed=link_allowed,
    )


def to(seen: LastSeen) -> Destination:
    return Destination(seen.channel, seen.identity, seen.conversation_id)


def fell_back(routing: Routing, originating: Destination = ORIGIN) -> bool:
    return routing.fell_back and routing.originating_only and routing.destinations == (originating,)


# --- originating and none ---------------------------------------------------------------


def test_originating_answers_on_the_wire() -> None:
    routing = route(ResponseTarget.originating())
    assert routing == Routing((ORIGIN,), originating_only=True)
    assert routing.fell_back is False
    assert routing.dropped == ()


def test_originating_ignores_everything_else() -> None:
    def never_asked(origin: str, destination: str) -> bool:
        raise AssertionError("the link policy is not consulted for the originating wire")

    routing = route(
        ResponseTarget.originating(),
        last_seen=(),
        linked=(),
        can_push={},
        link_allowed=never_asked,
    )
    assert routing == Routing((ORIGIN,), originating_only=True)


def test_none_delivers_nowhere() -> None:
    routing = route(ResponseTarget.none())
    assert routing == Routing(())
    assert routing.originating_only is False
    assert routing.fell_back is False


# --- active -----------------------------------------------------------------------------


def test_active_is_the_channel_seen_last() -> None:
    routing = route(ResponseTarget.active())
    assert routing.destinations == (to(TEAMS_CHAT),)
    assert routing.dropped == ()
    assert not routing.fell_back
    assert not routing.originating_only


def test_active_skips_a_newer_channel_that_cannot_push() -> None:
    # Last seen on the Responses API: the reply goes to the newest channel that can push.
    latest_api = LastSeen("responses", API, None, 100.0)
    routing = route(ResponseTarget.active(), last_seen=(*LAST_SEEN, latest_api))
    assert routing.destinations == (to(TEAMS_CHAT),)
    assert routing.dropped == (Dropped("responses", API, DropReason.CANNOT_PUSH),)
    assert not routing.fell_back


def test_active_skips_a_newer_channel_the_link_policy_forbids() -> None:
    def no_teams(origin: str, destination: str) -> bool:
        return destination != "teams"

    routing = route(ResponseTarget.active(), link_allowed=no_teams)
    assert routing.destinations == (to(TG_GROUP),)
    assert routing.dropped == (Dropped("teams", TEAMS, DropReason.LINK_POLICY),)


def test_active_seen_only_where_nothing_can_push_falls_back() -> None:
    routing = route(ResponseTarget.active(), last_seen=(API_SEEN,))
    assert routing.dropped == (Dropped("responses", API, DropReason.CANNOT_PUSH),)
    assert fell_back(routing)


def test_active_never_seen_anywhere_falls_back_to_the_originating_conversation() -> None:
    here = Destination("telegram", TG, "dm_42")
    routing = route(ResponseTarget.active(), originating=here, last_seen=())
    assert routing.destinations == (here,)
    assert routing.dropped == ()
    assert fell_back(routing, here)


def test_active_never_seen_from_a_channel_that_cannot_push_falls_back() -> None:
    routing = route(ResponseTarget.active(), last_seen=())
    assert routing.dropped == ()
    assert fell_back(routing)


# --- channel / channels ------------------------------------------------------------------


def test_channel_takes_the_most_recent_conversation_on_it() -> None:
    routing = route(ResponseTarget.channel("telegram", echo_input=True))
    assert routing.destinations == (to(TG_GROUP),)
    assert routing.dropped == ()
    assert not routing.fell_back


def test_channels_keep_the_order_named() -> None:
    routing = route(ResponseTarget.to_channels(["telegram", "teams"]))
    assert routing.destinations == (to(TG_GROUP), to(TEAMS_CHAT))
    routing = route(ResponseTarget.to_channels(["teams", "telegram"]))
    assert routing.destinations == (to(TEAMS_CHAT), to(TG_GROUP))


def test_channel_never_seen_is_dropped() -> None:
    routing = route(ResponseTarget.to_channels(["slack", "teams"]))
    assert routing.destinations == (to(TEAMS_CHAT),)
    assert routing.dropped == (Dropped("slack", None, DropReason.NEVER_SEEN),)


def test_channel_that_cannot_push_is_dropped() -> None:
    routing = route(ResponseTarget.to_channels(["responses", "telegram"]))
    assert routing.destinations == (to(TG_GROUP),)
    assert routing.dropped == (Dropped("responses", API, DropReason.CANNOT_PUSH),)


def test_channel_the_link_policy_forbids_is_dropped() -> None:
    def no_teams(origin: str, destination: str) -> bool:
        return destination != "teams"

    routing = route(ResponseTarget.to_channels(["teams", "telegram"]), link_allowed=no_teams)
    assert routing.destinations == (to(TG_GROUP),)
    assert routing.dropped == (Dropped("teams", TEAMS, DropReason.LINK_POLICY),)


def test_link_policy_is_asked_about_the_originating_channel_and_the_destination() -> None:
    asked: list[tuple[str, str]] = []

    def record(origin: str, destination: str) -> bool:
        asked.append((origin, destination))
        return True

    route(ResponseTarget.to_channels(["teams", "telegram"]), link_allowed=record)
    assert asked == [("responses", "teams"), ("responses", "telegram")]


def test_the_originating_channel_needs_no_link_permission() -> None:
    here = Destination("telegram", TG, "dm_42")

    def deny_all(origin: str, destination: str) -> bool:
        return False

    routing = route(ResponseTarget.channel("telegram"), originating=here, link_allowed=deny_all)
    assert routing.destinations == (to(TG_GROUP),)
    assert not routing.fell_back


def test_a_named_channel_the_host_does_not_have_is_unknown() -> None:
    routing = route(ResponseTarget.to_channels(["telegrm", "teams"]))
    assert routing.destinations == (to(TEAMS_CHAT),)
    assert routing.dropped == (Dropped("telegrm", None, DropReason.UNKNOWN_CHANNEL),)


def test_a_channel_seen_but_no_longer_configured_is_unknown() -> None:
    irc = ChannelIdentity("irc", "nick")
    routing = route(
        ResponseTarget.to_channels(["irc"]),
        last_seen=(*LAST_SEEN, LastSeen("irc", irc, "#chan", 95.0)),
    )
    assert routing.dropped == (Dropped("irc", irc, DropReason.UNKNOWN_CHANNEL),)
    assert fell_back(routing)


def test_a_channel_named_twice_is_pushed_once() -> None:
    routing = route(ResponseTarget.to_channels(["telegram", "teams", "telegram"]))
    assert routing.destinations == (to(TG_GROUP), to(TEAMS_CHAT))


def test_channels_all_dropped_fall_back_with_the_reasons() -> None:
    routing = route(ResponseTarget.to_channels(["slack", "responses"]))
    assert fell_back(routing)
    assert routing.dropped == (
        Dropped("slack", None, DropReason.NEVER_SEEN),
        Dropped("responses", API, DropReason.CANNOT_PUSH),
    )


# --- identities ---------------------------------------------------------------------------


def test_identities_take_each_identitys_most_recent_conversation() -> None:
    routing = route(ResponseTarget.to_identities([TEAMS, TG]))
    assert routing.destinations == (to(TEAMS_CHAT), to(TG_GROUP))
    assert routing.dropped == ()


def test_identity_of_somebody_else_is_dropped() -> None:
    routing = route(ResponseTarget.to_identities([STRANGER, TG]))
    assert routing.destinations == (to(TG_GROUP),)
    assert routing.dropped == (Dropped("telegram", STRANGER, DropReason.NOT_OWNED),)


def test_only_identities_of_somebody_else_fall_back() -> None:
    routing = route(ResponseTarget.to_identities([STRANGER]))
    assert fell_back(routing)
    assert routing.dropped == (Dropped("telegram", STRANGER, DropReason.NOT_OWNED),)


def test_identity_seen_but_not_linked_is_the_users() -> None:
    # seen with the isolation key: the user's, even before any link
    routing = route(ResponseTarget.to_identities([TG]), linked=())
    assert routing.destinations == (to(TG_GROUP),)


def test_ownership_ignores_display_attributes() -> None:
    dressed = ChannelIdentity("telegram", "42", {"display_name": "Ada"})
    routing = route(ResponseTarget.to_identities([dressed]))
    assert routing.destinations == (to(TG_GROUP),)


def test_linked_identity_never_seen_is_dropped() -> None:
    routing = route(ResponseTarget.to_identities([SLACK]))
    assert routing.dropped == (Dropped("slack", SLACK, DropReason.NEVER_SEEN),)
    assert fell_back(routing)


def test_identity_on_a_channel_that_cannot_push_or_is_forbidden_is_dropped() -> None:
    def no_teams(origin: str, destination: str) -> bool:
        return destination != "teams"

    routing = route(ResponseTarget.to_identities([API, TEAMS, TG]), link_allowed=no_teams)
    assert routing.destinations == (to(TG_GROUP),)
    assert routing.dropped == (
        Dropped("responses", API, DropReason.CANNOT_PUSH),
        Dropped("teams", TEAMS, DropReason.LINK_POLICY),
    )


def test_an_identity_named_twice_is_pushed_once() -> None:
    routing = route(ResponseTarget.to_identities([TG, TEAMS, TG]))
    assert routing.destinations == (to(TG_GROUP), to(TEAMS_CHAT))


# --- all_linked ---------------------------------------------------------------------------


def test_all_linked_reaches_each_channel_once_most_recent_first() -> None:
    routing = route(ResponseTarget.all_linked(echo_input=True))
    assert routing.destinations == (to(TEAMS_CHAT), to(TG_GROUP))
    assert set(routing.dropped) == {
        Dropped("responses", API, DropReason.CANNOT_PUSH),
        Dropped("slack", SLACK, DropReason.NEVER_SEEN),
    }
    assert not routing.fell_back


def test_all_linked_two_identities_on_one_channel_take_the_most_recent() -> None:
    other_tg = ChannelIdentity("telegram", "43")
    newer = LastSeen("telegram", other_tg, "dm_43", 85.0)
    routing = route(
        ResponseTarget.all_linked(), last_seen=(*LAST_SEEN, newer), linked=(*LINKED, other_tg)
    )
    assert routing.destinations == (to(TEAMS_CHAT), to(newer))


def test_all_linked_drops_what_the_policy_forbids() -> None:
    def only_telegram(origin: str, destination: str) -> bool:
        return destination == "telegram"

    routing = route(ResponseTarget.all_linked(), link_allowed=only_telegram)
    assert routing.destinations == (to(TG_GROUP),)
    assert Dropped("teams", TEAMS, DropReason.LINK_POLICY) in routing.dropped


def test_all_linked_with_nothing_pushable_falls_back() -> None:
    routing = route(ResponseTarget.all_linked(), last_seen=(API_SEEN,))
    assert fell_back(routing)
    assert set(routing.dropped) == {
        Dropped("responses", API, DropReason.CANNOT_PUSH),
        Dropped("telegram", TG, DropReason.NEVER_SEEN),
        Dropped("teams", TEAMS, DropReason.NEVER_SEEN),
        Dropped("slack", SLACK, DropReason.NEVER_SEEN),
    }


def test_equal_times_resolve_the_same_way_every_time() -> None:
    tied = (LastSeen("teams", TEAMS, "a", 5.0), LastSeen("telegram", TG, "b", 5.0))
    first = route(ResponseTarget.active(), last_seen=tied)
    second = route(ResponseTarget.active(), last_seen=tied[::-1])
    assert first == second
    assert first.destinations == (Destination("teams", TEAMS, "a"),)


# --- properties ---------------------------------------------------------------------------

CHANNELS = ("alpha", "beta", "gamma", "delta")
CONFIGURED = CHANNELS[:3]  # "delta" may be seen or linked but the host no longer has it
NAMED = (*CHANNELS, "nowhere")
PUSH_KINDS = (TargetKind.ACTIVE, TargetKind.CHANNELS, TargetKind.IDENTITIES, TargetKind.ALL_LINKED)


@attrs.frozen
class World:
    originating: Destination
    identities: frozenset[ChannelIdentity]  # everything the user owns
    last_seen: tuple[LastSeen, ...]
    linked: tuple[ChannelIdentity, ...]
    can_push: dict[str, bool]
    allowed: frozenset[tuple[str, str]]
    target: ResponseTarget

    def link_allowed(self, origin: str, destination: str) -> bool:
        return (origin, destination) in self.allowed

    def permitted(self, channel: str) -> bool:
        """Pushable, and the policy lets this conversation go there."""
        return self.can_push.get(channel, False) and (
            channel == self.originating.channel
            or self.link_allowed(self.originating.channel, channel)
        )

    def route(self) -> Routing:
        return resolve_destinations(
            self.target,
            originating=self.originating,
            last_seen=self.last_seen,
            linked=self.linked,
            can_push=self.can_push,
            link_allowed=self.link_allowed,
        )


@st.composite
def worlds(draw: st.DrawFn) -> World:
    # mostly pushable and mostly allowed, so that routes with several destinations occur
    can_push = {name: draw(st.sampled_from((True, True, True, False))) for name in CONFIGURED}
    allowed = frozenset(
        pair
        for pair in itertools.product(CHANNELS, CHANNELS)
        if draw(st.sampled_from((True, True, False)))
    )
    mine = draw(
        st.lists(
            st.builds(ChannelIdentity, st.sampled_from(CHANNELS), st.sampled_from(("u1", "u2"))),
            min_size=2,
            max_size=6,
            unique=True,
        )
    )
    strangers = [ChannelIdentity(name, "x9") for name in CHANNELS]
    origin_identity = draw(st.sampled_from(mine))
    originating = Destination(
        origin_identity.channel, origin_identity, draw(st.sampled_from((None, "here")))
    )
    seen = draw(
        st.lists(
            st.builds(
                lambda identity, conversation, at: LastSeen(
                    identity.channel, identity, conversation, at
                ),
                st.sampled_from(mine),
                st.sampled_from(("c1", "c2", None)),
                st.sampled_from((1.0, 2.0, 3.0)) | st.floats(0.0, 100.0),
            ),
            min_size=1,
            max_size=10,
        )
    )
    linked = draw(st.lists(st.sampled_from(mine), max_size=6))
    kind = draw(
        st.sampled_from((*PUSH_KINDS, *PUSH_KINDS, TargetKind.NONE, TargetKind.ORIGINATING))
    )
    users_channels = sorted({identity.channel for identity in mine})
    named_channels = tuple(
        draw(st.lists(st.sampled_from(users_channels) | st.sampled_from(NAMED), max_size=5))
    )
    named_identities = tuple(
        draw(st.lists(st.sampled_from(mine) | st.sampled_from(strangers), max_size=5))
    )
    target = ResponseTarget(kind, channels=named_channels, identities=named_identities)
    owned = frozenset({origin_identity, *linked, *(s.identity for s in seen)})
    return World(originating, owned, tuple(seen), tuple(linked), can_push, allowed, target)


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_routing_never_leaves_what_the_user_may_reach(world: World) -> None:
    routing = world.route()
    kind = world.target.kind
    if kind is TargetKind.NONE:
        assert routing == Routing(())
        return
    if kind is TargetKind.ORIGINATING:
        assert routing == Routing((world.originating,), originating_only=True)
        return

    assert routing.destinations, "a push target never ends empty"
    if routing.fell_back:
        assert fell_back(routing, world.originating)
        return
    assert not routing.originating_only

    pairs = [(d.channel, d.identity) for d in routing.destinations]
    assert len(pairs) == len(set(pairs))
    seen = {(s.channel, s.identity, s.conversation_id) for s in world.last_seen}
    for d in routing.destinations:
        assert world.can_push.get(d.channel) is True
        assert world.permitted(d.channel)
        assert d.identity in world.identities
        assert d.identity.native_id != "x9"
        assert d.identity.channel == d.channel
        # a conversation the user was seen in, or (active, seen nowhere) the one they are in
        assert (d.channel, d.identity, d.conversation_id) in seen or (
            kind is TargetKind.ACTIVE and not world.last_seen and d == world.originating
        )
    for dropped in routing.dropped:
        if dropped.reason is DropReason.NOT_OWNED:
            assert dropped.identity not in world.identities


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_each_kind_takes_what_it_names(world: World) -> None:
    routing = world.route()
    kind = world.target.kind
    if kind not in PUSH_KINDS or routing.fell_back:
        return
    newest: dict[str, float] = {}
    newest_of: dict[ChannelIdentity, float] = {}
    for s in world.last_seen:
        newest[s.channel] = max(newest.get(s.channel, s.seen_at), s.seen_at)
        newest_of[s.identity] = max(newest_of.get(s.identity, s.seen_at), s.seen_at)
    seen_at: dict[tuple[str, ChannelIdentity, str | None], float] = {}
    for s in world.last_seen:
        key = (s.channel, s.identity, s.conversation_id)
        seen_at[key] = max(seen_at.get(key, s.seen_at), s.seen_at)

    if kind is TargetKind.ACTIVE:
        assert len(routing.destinations) == 1
        reachable = [s.seen_at for s in world.last_seen if world.permitted(s.channel)]
        if world.last_seen:
            (d,) = routing.destinations
            # the most recent sighting on a channel that can reach the user, not merely the
            # most recent sighting
            assert seen_at[(d.channel, d.identity, d.conversation_id)] == max(reachable)
    elif kind is TargetKind.CHANNELS:
        order = list(dict.fromkeys(world.target.channels))
        channels = [d.channel for d in routing.destinations]
        assert channels == [c for c in order if c in channels]
        for d in routing.destinations:
            assert seen_at[(d.channel, d.identity, d.conversation_id)] == newest[d.channel]
    elif kind is TargetKind.IDENTITIES:
        for d in routing.destinations:
            assert d.identity in world.target.identities
            assert seen_at[(d.channel, d.identity, d.conversation_id)] == newest_of[d.identity]
    else:  # ALL_LINKED
        channels = [d.channel for d in routing.destinations]
        expected = {s.channel for s in world.last_seen if world.permitted(s.channel)}
        assert sorted(channels) == sorted(expected)  # each exactly once
        for d in routing.destinations:
            assert seen_at[(d.channel, d.identity, d.conversation_id)] == newest[d.channel]
        times = [newest[c] for c in channels]
        assert times == sorted(times, reverse=True)


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_every_named_channel_or_identity_is_pushed_or_dropped(world: World) -> None:
    routing = world.route()
    kind = world.target.kind
    reached_channels = {d.channel for d in routing.destinations if not routing.fell_back}
    dropped_channels = {d.channel for d in routing.dropped}
    if kind is TargetKind.CHANNELS:
        for name in world.target.channels:
            assert name in reached_channels or name in dropped_channels
        for dropped in routing.dropped:
            assert dropped.channel in world.target.channels
            assert dropped.reason is not DropReason.NOT_OWNED
            if dropped.channel not in world.can_push:
                assert dropped.reason is DropReason.UNKNOWN_CHANNEL
    if kind is TargetKind.IDENTITIES:
        reached = {d.identity for d in routing.destinations if not routing.fell_back}
        dropped_identities = {d.identity for d in routing.dropped}
        for identity in world.target.identities:
            assert identity in reached or identity in dropped_identities
            if identity not in world.identities:
                assert Dropped(identity.channel, identity, DropReason.NOT_OWNED) in (
                    routing.dropped
                )
    if kind is TargetKind.ALL_LINKED:
        for identity in world.identities:
            assert identity.channel in reached_channels | dropped_channels
