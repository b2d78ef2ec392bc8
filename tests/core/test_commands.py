"""Host commands in the core: parsing, the catalog, authorization, and what each command
does through ``run_turn`` (``/link`` twice makes one conversation, ``/unlink`` leaves it,
``/new`` rotates it), driven without an event loop by ``IdentityWorld``.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import effects as fx
from agenthost.sansio_core.authorization import NativeIdAllowlist
from agenthost.sansio_core.commands import (
    LINK_COMMANDS,
    NEW_CONVERSATION,
    CommandCatalog,
    CommandReply,
    ParsedCommand,
    command_of,
    host_commands,
    parse,
)
from agenthost.sansio_core.link_codes import AttemptLimit, CodeLimits
from agenthost.sansio_core.link_policy import DenyAllLinks, LinkRules
from agenthost.sansio_core.turns import RefusalReason, TurnCompleted, TurnRefused
from agenthost.sansio_core.types import ChannelIdentity, ChannelRequest, HostMessage
from tests.core.identity_world import IdentityWorld, message, settings_for

ALICE = ChannelIdentity("invocations", "alice")
ALICE_CHAT = ChannelIdentity("chat", "alice-chat")
BOB = ChannelIdentity("chat", "bob")
OPEN = settings_for(None)


def reply(driven_outcome: object) -> str:
    assert isinstance(driven_outcome, TurnCompleted), driven_outcome
    assert isinstance(driven_outcome.result.result, CommandReply)
    assert driven_outcome.saved is False
    return driven_outcome.result.text


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bot", "expected"),
    [
        ("/link", None, ParsedCommand("link", "")),
        ("  /LINK  abcd-efgh-jkmn ", None, ParsedCommand("link", "abcd-efgh-jkmn")),
        ("/link@AgentBot code", "agentbot", ParsedCommand("link", "code")),
        ("/link@AgentBot code", "@AgentBot", ParsedCommand("link", "code")),
        ("/link@OtherBot code", "agentbot", None),
        ("/link@AgentBot", None, None),
        ("hello /link", None, None),
        ("/", None, None),
        ("//link", None, None),
        ("/new\nand more", None, ParsedCommand("new", "and more")),
    ],
)
def test_parse(text: str, bot: str | None, expected: ParsedCommand | None) -> None:
    assert parse(text, bot) == expected


def test_only_catalog_commands_in_one_user_message_are_commands() -> None:
    catalog = CommandCatalog(LINK_COMMANDS, {"quiet"})
    assert command_of(message("/link", ALICE), catalog, None) == ParsedCommand("link")
    assert command_of(message("/start", ALICE), catalog, None) is None
    quiet = ChannelIdentity("quiet", "x")
    assert command_of(message("/link", quiet), catalog, None) is None
    two = ChannelRequest("chat", ALICE_CHAT, (HostMessage.user("/link"), HostMessage.user("more")))
    assert command_of(two, catalog, None) is None
    assistant = ChannelRequest("chat", ALICE_CHAT, (HostMessage("assistant", ()),))
    assert command_of(assistant, catalog, None) is None
    assert command_of(message("/link", ALICE), CommandCatalog(), None) is None


def test_the_catalog_as_channel_commands() -> None:
    catalog = CommandCatalog(LINK_COMMANDS, {"quiet"})
    assert [c.name for c in catalog.channel_commands("chat")] == ["link", "unlink", "new", "help"]
    assert catalog.channel_commands("quiet") == ()


# --- through the turn ---------------------------------------------------------------------


def test_a_command_never_reaches_the_target() -> None:
    world = IdentityWorld()
    for text in ("/link", "/help", "/new", "/unlink", "/link ABCD-EFGH-JKMN", "/link nope"):
        driven = world.turn(message(text, ALICE_CHAT), OPEN)
        assert driven.of_type(fx.RunTarget) == []
        assert driven.of_type(fx.CallRunHook) == []
        reply(driven.outcome)
    assert world.targets == []


def test_help_lists_the_catalog() -> None:
    text = reply(IdentityWorld().turn(message("/help", ALICE), OPEN).outcome)
    for name in ("/link", "/unlink", "/new", "/help"):
        assert name in text


def test_link_twice_makes_one_conversation() -> None:
    world = IdentityWorld()
    world.turn(message("my name is Ada", ALICE), OPEN)
    world.turn(message("before linking", ALICE_CHAT), OPEN)
    chat_before = world.direct_session(ALICE_CHAT)
    assert chat_before is not None

    shown = reply(world.turn(message("/link", ALICE), OPEN).outcome)
    code = world.codes[-1]
    assert code in shown
    linked = reply(world.turn(message(f"/link {code}", ALICE_CHAT), OPEN).outcome)
    assert linked.startswith("Linked")
    assert world.key_of(ALICE) == world.key_of(ALICE_CHAT)

    driven = world.turn(message("what did I say first?", ALICE_CHAT), OPEN)
    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_state == {"inputs": ["my name is Ada"]}
    # The chat identity's own earlier conversation is still stored, no longer reached.
    assert world.sessions[chat_before.session_id].state == {"inputs": ["before linking"]}


def test_a_code_works_once() -> None:
    world = IdentityWorld()
    world.turn(message("/link", ALICE), OPEN)
    code = world.codes[-1]
    assert reply(world.turn(message(f"/link {code}", ALICE_CHAT), OPEN).outcome).startswith(
        "Linked"
    )
    replay = reply(world.turn(message(f"/link {code}", BOB), OPEN).outcome)
    assert "already used" in replay
    assert world.key_of(BOB) != world.key_of(ALICE)


def test_an_expired_code_fails() -> None:
    world = IdentityWorld()
    world.turn(message("/link", ALICE), OPEN)
    world.now += 601
    assert "expired" in reply(world.turn(message(f"/link {world.codes[-1]}", BOB), OPEN).outcome)
    assert world.key_of(BOB) != world.key_of(ALICE)


def test_wrong_codes_lock_the_sender_out_until_the_cool_down() -> None:
    limits = CodeLimits(per_identity=AttemptLimit(3, 600, 300))
    world = IdentityWorld(limits=limits)
    world.turn(message("/link", ALICE), OPEN)
    code = world.codes[-1]
    for _ in range(3):
        answer = reply(world.turn(message("/link ZZZZ-ZZZZ-ZZZZ", BOB), OPEN).outcome)
        assert "not valid" in answer
    assert "Too many" in reply(world.turn(message(f"/link {code}", BOB), OPEN).outcome)
    world.now += 299
    assert "Too many" in reply(world.turn(message(f"/link {code}", BOB), OPEN).outcome)
    world.now += 1
    assert reply(world.turn(message(f"/link {code}", BOB), OPEN).outcome).startswith("Linked")


def test_the_issuer_sending_its_own_code_is_told_to_use_the_other_account() -> None:
    world = IdentityWorld()
    world.turn(message("/link", ALICE), OPEN)
    answer = reply(world.turn(message(f"/link {world.codes[-1]}", ALICE), OPEN).outcome)
    assert "other account" in answer


def test_the_link_policy_refusal_is_a_clear_message() -> None:
    world = IdentityWorld(rules=LinkRules(DenyAllLinks()))
    world.turn(message("/link", ALICE), OPEN)
    answer = reply(world.turn(message(f"/link {world.codes[-1]}", BOB), OPEN).outcome)
    assert "does not allow" in answer
    assert world.key_of(BOB) != world.key_of(ALICE)


def test_link_in_a_group_issues_and_completes_nothing() -> None:
    world = IdentityWorld()
    asked = world.turn(message("/link", BOB, group="g1"), OPEN)
    assert "directly" in reply(asked.outcome)
    assert asked.of_type(fx.BeginLink) == [] and world.codes == []
    world.turn(message("/link", ALICE), OPEN)
    used = world.turn(message(f"/link {world.codes[-1]}", BOB, group="g1"), OPEN)
    assert "directly" in reply(used.outcome)
    assert used.of_type(fx.CompleteLink) == []
    assert world.key_of(BOB) != world.key_of(ALICE)


def test_text_that_is_not_a_code_is_answered_without_an_attempt() -> None:
    world = IdentityWorld()
    driven = world.turn(message("/link please", BOB), OPEN)
    assert "not a link code" in reply(driven.outcome)
    assert driven.of_type(fx.CompleteLink) == []
    assert world.counters == {}


def test_new_rotates_the_conversation_and_keeps_the_old_one() -> None:
    world = IdentityWorld()
    world.turn(message("first", ALICE_CHAT), OPEN)
    old = world.direct_session(ALICE_CHAT)
    assert old is not None
    assert "new conversation" in reply(world.turn(message("/new", ALICE_CHAT), OPEN).outcome)
    driven = world.turn(message("second", ALICE_CHAT), OPEN)
    (run,) = driven.of_type(fx.RunTarget)
    assert run.session_state is None
    assert world.sessions[old.session_id].state == {"inputs": ["first"]}


def test_new_and_help_are_commands_without_a_linker() -> None:
    """Without a linker the catalog is ``/new`` and ``/help``: ``/new`` still rotates the
    conversation and never reaches the target; ``/link`` is a message for the target."""
    assert [spec.name for spec in host_commands(can_link=False)] == ["new", "help"]
    assert [spec.name for spec in host_commands(can_link=True)] == [
        "link",
        "unlink",
        "new",
        "help",
    ]
    unlinkable = attrs.evolve(
        settings_for(None, can_link=False),
        commands=CommandCatalog(host_commands(can_link=False)),
    )
    world = IdentityWorld()
    world.turn(message("first", ALICE_CHAT), unlinkable)
    old = world.direct_session(ALICE_CHAT)
    assert old is not None

    new = world.turn(message("/new", ALICE_CHAT), unlinkable)
    assert new.of_type(fx.RunTarget) == []
    assert len(new.of_type(fx.RotateSession)) == 1
    assert reply(new.outcome) == NEW_CONVERSATION
    (run,) = world.turn(message("second", ALICE_CHAT), unlinkable).of_type(fx.RunTarget)
    assert run.session_state is None

    helped = reply(world.turn(message("/help", ALICE_CHAT), unlinkable).outcome)
    assert "/new" in helped and "/help" in helped
    assert "/link" not in helped and "/unlink" not in helped

    linked = world.turn(message("/link", ALICE_CHAT), unlinkable)
    assert len(linked.of_type(fx.RunTarget)) == 1  # not a command here: the target's
    assert not isinstance(linked.outcome.result.result, CommandReply)


def test_unlink_answers_and_separates() -> None:
    world = IdentityWorld()
    assert "not linked" in reply(world.turn(message("/unlink", BOB), OPEN).outcome)
    world.turn(message("/link", ALICE), OPEN)
    world.turn(message(f"/link {world.codes[-1]}", BOB), OPEN)
    assert world.key_of(BOB) == world.key_of(ALICE)
    assert reply(world.turn(message("/unlink", BOB), OPEN).outcome).startswith("Unlinked")
    assert world.key_of(BOB) != world.key_of(ALICE)


def test_commands_are_authorized_like_messages() -> None:
    world = IdentityWorld()
    strangers_out = settings_for(
        NativeIdAllowlist({"invocations": ["alice"]}, include_linked=False)
    )
    denied = world.turn(message("/help", BOB), strangers_out).outcome
    assert isinstance(denied, TurnRefused) and denied.reason is RefusalReason.DENIED

    must_link = settings_for(require_link=True)
    assert "/link" in reply(world.turn(message("/help", BOB), must_link).outcome)
    refused = world.turn(message("/new", BOB), must_link).outcome
    assert isinstance(refused, TurnRefused) and refused.reason is RefusalReason.LINK_REQUIRED
    assert code_shown(world.turn(message("/link", BOB), must_link).outcome, world)


def code_shown(outcome: object, world: IdentityWorld) -> bool:
    return world.codes[-1] in reply(outcome)


def test_a_bot_name_scopes_group_commands() -> None:
    world = IdentityWorld()
    mine = world.turn(message("/help@agentbot", BOB, group="g"), OPEN, bot_name="AgentBot")
    reply(mine.outcome)
    others = world.turn(message("/help@otherbot", BOB, group="g"), OPEN, bot_name="AgentBot")
    assert others.of_type(fx.RunTarget) != []  # not ours: a message for the target


def test_no_linker_means_no_commands() -> None:
    world = IdentityWorld()
    driven = world.turn(message("/link", ALICE), settings_for(None, commands=False))
    assert driven.of_type(fx.RunTarget) != []


# --- property: after unlink the identity never reaches the old session -------------------------

PEOPLE = [ALICE, ALICE_CHAT, BOB, ChannelIdentity("chat", "carol")]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("say"), st.sampled_from(PEOPLE), st.just(None)),
        st.tuples(st.just("link"), st.sampled_from(PEOPLE), st.sampled_from(PEOPLE)),
        st.tuples(st.just("unlink"), st.sampled_from(PEOPLE), st.just(None)),
        st.tuples(st.just("new"), st.sampled_from(PEOPLE), st.just(None)),
    ),
    max_size=16,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_after_unlink_the_identity_never_reaches_the_old_session(
    ops: list[tuple[str, ChannelIdentity, ChannelIdentity | None]],
) -> None:
    world = IdentityWorld()
    forbidden: dict[ChannelIdentity, set[str]] = {person: set() for person in PEOPLE}
    for op, who, other in ops:
        if op == "say":
            driven = world.turn(message("hi", who), OPEN)
            (run,) = driven.of_type(fx.RunTarget)
            assert run.session_ref.session_id not in forbidden[who]
        elif op == "link" and other is not None:
            world.turn(message("/link", who), OPEN)
            answer = reply(world.turn(message(f"/link {world.codes[-1]}", other), OPEN).outcome)
            if answer.startswith("Linked"):
                # Linked again, by its own explicit act: the user's sessions are its own.
                for member in world.user(other).identities:
                    forbidden[member] = set()
        elif op == "unlink":
            before = world.user(who)
            shared = {
                alias.session_id
                for (owner, _), alias in world.aliases.items()
                if owner == before.isolation_key
            }
            answer = reply(world.turn(message("/unlink", who), OPEN).outcome)
            if answer.startswith("Unlinked"):
                forbidden[who] |= shared
                assert world.key_of(who) != before.isolation_key
        else:
            world.turn(message("/new", who), OPEN)
