"""The codec on recorded interaction payloads (``fixtures/``, shaped like Discord's), the
command menu, and the rendering of messages (splitting, mentions). No I/O."""

from __future__ import annotations

import re

import pytest

from agenthost.channels.discord.codec import (
    AutocompleteQuery,
    CommandNames,
    InteractionType,
    MalformedInteraction,
    Turn,
    Unsupported,
    channel_request,
    command_payloads,
    parse_interaction,
    understand,
)
from agenthost.channels.discord.rendering import (
    EPHEMERAL,
    MAX_CONTENT,
    message_payload,
    split_message,
    utf16_length,
)
from agenthost.sansio_core.commands import CommandCatalog, host_commands
from agenthost.sansio_core.sessions import DIRECT, ScopeKey, scope_for
from agenthost.sansio_core.types import ChannelCommand, ChannelIdentity, ConversationScope
from tests.channels.discord.interactions import fixture

NAMES = CommandNames("ask", host=frozenset({"new", "help", "link", "unlink"}))
ADA = "530000000000000001"


def asked(name: str) -> object:
    return understand(parse_interaction(fixture(name)), NAMES)


def test_a_guild_slash_command_is_the_member_in_the_channel() -> None:
    interaction = parse_interaction(fixture("guild_slash_command"))
    assert interaction.type == InteractionType.APPLICATION_COMMAND
    assert interaction.user_id == ADA
    assert interaction.guild_id == "1187400000000000100"
    assert interaction.conversation_id == "1187400000000000100:1187400000000000200"
    assert not interaction.is_direct
    assert interaction.user_attributes == {"username": "ada.lovelace", "global_name": "Ada"}
    assert understand(interaction, NAMES) == Turn("What is the capital of France?")

    request = channel_request(interaction, "What is the capital of France?", channel="discord")
    assert request.identity == ChannelIdentity("discord", ADA)
    assert request.session.conversation_id == "1187400000000000100:1187400000000000200"
    assert request.attributes["interaction_id"] == "1311000000000001001"
    assert request.attributes["locale"] == "en-GB"
    assert request.input[0].text == "What is the capital of France?"
    # By default each member has their own session in each channel.
    scope, _ = scope_for(request, fresh_key="unused")
    assert scope == ScopeKey(None, "discord:conversation:1187400000000000100:1187400000000000200")


def test_a_command_in_the_bots_dm_is_direct_and_a_host_command() -> None:
    interaction = parse_interaction(fixture("dm_slash_command"))
    assert interaction.user_id == ADA  # from "user", there is no member in a DM
    assert interaction.guild_id is None
    assert interaction.is_direct
    assert interaction.conversation_id == "dm:1190000000000000300"
    assert understand(interaction, NAMES) == Turn("/link AB12-CD34-EF56", host_command=True)
    request = channel_request(interaction, "/link AB12-CD34-EF56", channel="discord")
    assert scope_for(request, fresh_key="unused") == (ScopeKey(None, DIRECT), None)


def test_a_private_channel_of_a_user_installed_app_is_not_direct() -> None:
    interaction = parse_interaction(fixture("private_channel_command"))
    assert interaction.context == 2
    assert not interaction.is_direct  # the other user reads the answer too
    assert interaction.conversation_id == "private:1200000000000000400"
    assert understand(interaction, NAMES) == Turn("Summarise our plan")


def test_a_thread_is_its_own_conversation() -> None:
    interaction = parse_interaction(fixture("thread_command"))
    assert interaction.conversation_id == "1187400000000000100:1300000000000000600"
    assert understand(interaction, NAMES) == Turn("/new", host_command=True)


def test_host_commands_are_not_host_commands_when_the_channel_opted_out() -> None:
    names = CommandNames("ask")
    assert isinstance(understand(parse_interaction(fixture("thread_command")), names), Unsupported)


def test_the_ask_command_can_be_renamed() -> None:
    data = fixture("guild_slash_command")
    data["data"]["name"] = "agent"
    assert isinstance(understand(parse_interaction(data), NAMES), Unsupported)
    assert understand(parse_interaction(data), CommandNames("agent")) == Turn(
        "What is the capital of France?"
    )


def test_an_applications_own_command_goes_to_the_target_as_text() -> None:
    data = fixture("guild_slash_command")
    data["data"] = {
        "id": "1",
        "name": "weather",
        "type": 1,
        "options": [{"name": "text", "type": 3, "value": "Lisbon"}],
    }
    names = CommandNames("ask", own=frozenset({"weather"}))
    assert understand(parse_interaction(data), names) == Turn("/weather Lisbon")


def test_a_button_is_its_custom_id_and_a_select_its_values() -> None:
    assert asked("button_click") == Turn("Tell me more")
    assert asked("select_menu") == Turn("favourite colour red, green")


def test_a_modal_is_the_text_its_inputs_hold_in_rows_and_labels() -> None:
    assert asked("modal_submit") == Turn("Trip to Lisbon\n\nThree days in May, on a budget.")


def test_a_modal_named_after_a_command_is_that_command() -> None:
    data = fixture("modal_submit")
    data["data"]["custom_id"] = "/link"
    data["data"]["components"] = [
        {"type": 1, "components": [{"type": 4, "custom_id": "code", "value": "AB12-CD34-EF56"}]}
    ]
    assert understand(parse_interaction(data), NAMES) == Turn(
        "/link AB12-CD34-EF56", host_command=True
    )


def test_autocomplete_names_the_focused_option() -> None:
    assert asked("autocomplete") == AutocompleteQuery("weather", "text", "Lis")


def test_a_context_menu_command_is_unsupported_not_an_error() -> None:
    assert isinstance(asked("message_context_command"), Unsupported)


def test_a_ping_needs_no_user() -> None:
    interaction = parse_interaction(fixture("ping"))
    assert interaction.type == InteractionType.PING
    assert interaction.user_id is None


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("id"),
        lambda d: d.update(id=1311000000000001001),  # a number loses digits: refused
        lambda d: d.update(application_id="app"),
        lambda d: d.update(type="2"),
        lambda d: d.pop("token"),
        lambda d: d.pop("member"),
        lambda d: d["member"]["user"].update(id="ada"),
        lambda d: d.update(guild_id=12),
    ],
)
def test_malformed_interactions_are_refused(change: object) -> None:
    data = fixture("guild_slash_command")
    change(data)  # type: ignore[operator]
    with pytest.raises(MalformedInteraction):
        parse_interaction(data)


def test_a_non_object_is_refused() -> None:
    with pytest.raises(MalformedInteraction):
        parse_interaction([1, 2])


# --- splitting ------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def test_a_long_reply_splits_at_paragraphs_and_loses_nothing() -> None:
    paragraphs = [f"Paragraph {i}. " + "lorem ipsum dolor sit amet " * 12 for i in range(30)]
    text = "\n\n".join(paragraphs)
    parts = split_message(text)
    assert len(parts) >= 3
    assert all(len(part) <= MAX_CONTENT for part in parts)
    assert _words(" ".join(parts)) == _words(text)
    # Each part but the last ends where a paragraph ended.
    for part in parts[:-1]:
        assert part.rstrip().endswith("amet")


def test_text_without_spaces_is_cut_hard_and_kept_whole() -> None:
    text = "x" * 5000
    parts = split_message(text)
    assert [len(p) for p in parts] == [1992, 1992, 1016]
    assert "".join(parts) == text


def test_a_code_block_cut_in_two_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(120))
    text = f"Here is the code:\n\n```python\n{code}\n```\n\nThat is all."
    parts = split_message(text)
    assert len(parts) >= 2
    for part in parts:
        assert len(part) <= MAX_CONTENT
        assert part.count("```") % 2 == 0, part[-80:]
    assert parts[1].startswith("```python\n")
    assert parts[0].endswith("\n```")
    body_lines = [line for part in parts for line in part.split("\n") if "compute" in line]
    assert body_lines == code.split("\n")  # indentation kept, no line lost


def test_characters_outside_the_bmp_count_twice() -> None:
    text = "😀" * 1500  # 1500 characters, 3000 UTF-16 code units
    parts = split_message(text)
    assert all(utf16_length(part) <= MAX_CONTENT for part in parts)
    assert "".join(parts) == text


def test_short_and_empty_texts() -> None:
    assert split_message("hi") == ["hi"]
    assert split_message("  \n ") == []
    exactly = "y" * MAX_CONTENT
    assert split_message(exactly) == [exactly]


def test_sentences_are_preferred_to_words() -> None:
    sentence = "This sentence is about forty characters. "
    text = sentence * 60
    first = split_message(text)[0]
    assert first.endswith("characters.")


def test_messages_ping_nobody() -> None:
    body = message_payload("@everyone look <@123>")
    assert body["allowed_mentions"] == {"parse": []}
    assert "flags" not in body
    assert message_payload("secret", ephemeral=True)["flags"] == EPHEMERAL


# --- the command menu -----------------------------------------------------------------------


def test_the_menu_holds_ask_the_host_commands_and_the_applications() -> None:
    catalog = CommandCatalog(host_commands(can_link=True)).channel_commands("discord")
    payloads = command_payloads(
        ask="ask",
        ask_description="Ask the agent something",
        host_commands=catalog,
        own_commands=[ChannelCommand("weather", "The weather somewhere")],
    )
    names = [p["name"] for p in payloads]
    assert names == ["ask", "link", "unlink", "new", "help", "weather"]
    ask = payloads[0]
    assert ask["options"] == [
        {
            "type": 3,
            "name": "message",
            "description": "What to say",
            "required": True,
            "max_length": 6000,
        }
    ]
    assert payloads[5]["options"][0]["autocomplete"] is False  # no choices supplied
    link = payloads[1]
    assert link["options"][0]["name"] == "code" and link["options"][0]["required"] is False
    assert "options" not in payloads[3]
    for payload in payloads:
        assert re.match(r"^[-_a-z0-9]{1,32}$", payload["name"])
        assert 1 <= len(payload["description"]) <= 100


def test_descriptions_are_cut_to_discords_limit() -> None:
    payloads = command_payloads(
        ask="ask",
        ask_description="a" * 150,
        host_commands=[ChannelCommand("new", "b" * 300)],
        own_commands=[],
    )
    assert [len(p["description"]) for p in payloads] == [100, 100]


def test_the_scope_in_guilds_follows_the_setting() -> None:
    interaction = parse_interaction(fixture("guild_slash_command"))
    shared = channel_request(
        interaction, "x", channel="discord", conversation_scope=ConversationScope.PER_CONVERSATION
    )
    assert shared.conversation_scope is ConversationScope.PER_CONVERSATION
