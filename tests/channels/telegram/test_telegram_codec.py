"""The codec on recorded update payloads (``fixtures/``, shaped like real Bot API updates).

Each fixture is first checked against python-telegram-bot's own parser, so a fixture that
drifted from the Bot API's shapes fails here, not silently in the codec.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from telegram import Update

from agenthost.channels.telegram.codec import (
    Addressing,
    BotProfile,
    Ignored,
    IgnoreReason,
    Inbound,
    MalformedUpdate,
    channel_request,
    chat_of,
    migration_of,
    parse_update,
)
from agenthost.sansio_core.sessions import scope_for
from agenthost.sansio_core.types import ChannelIdentity, ConversationScope, UriPart
from tests.channels.telegram.telegram_updates import BOT_USERNAME, fixture

BOT = BotProfile(7012345678, BOT_USERNAME)
ALL_FIXTURES = [
    "private_message",
    "group_mention",
    "group_without_mention",
    "forum_topic",
    "command_for_this_bot",
    "command_for_another_bot",
    "edited_message",
    "callback_query",
    "photo_with_caption",
]


def parsed(name: str, addressing: Addressing = Addressing.MENTION_ONLY) -> Inbound:
    result = parse_update(fixture(name), bot=BOT, addressing=addressing, answer_edits=True)
    assert isinstance(result, Inbound), result
    return result


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixtures_are_real_bot_api_updates(name: str) -> None:
    data = fixture(name)
    update = Update.de_json(copy.deepcopy(data), None)
    assert update.update_id == data["update_id"]
    # Every field is one the Bot API defines: python-telegram-bot keeps unknown ones aside.
    assert update.api_kwargs == {}
    message = update.effective_message
    assert message is not None and message.api_kwargs == {}
    assert update.effective_user is not None and update.effective_chat is not None


def test_private_message() -> None:
    inbound = parsed("private_message")
    assert inbound.kind == "message"
    assert inbound.identity("telegram") == ChannelIdentity("telegram", "5128442071")
    assert inbound.identity("telegram").attributes["username"] == "ada_l"
    assert inbound.is_direct
    assert inbound.conversation_id == "5128442071"
    assert inbound.text == "Hello there! Can you help me plan a trip?"
    assert inbound.command is None and inbound.files == ()

    request = channel_request(inbound, channel="telegram")
    assert request.session.is_direct and request.session.key is None
    assert request.input[0].text == inbound.text
    assert request.attributes["update_id"] == 849021731
    scope, key = scope_for(request, fresh_key="unused")
    assert scope is not None and scope.qualifier == "direct" and key is None


def test_group_message_with_a_mention_is_addressed_and_loses_the_mention() -> None:
    inbound = parsed("group_mention")
    assert not inbound.is_direct
    assert inbound.chat_id == -1002233445566
    assert inbound.identity("telegram").native_id == "6230117893"  # the user, not the chat
    assert inbound.conversation_id == "-1002233445566"
    # The emoji after the mention is two UTF-16 units: offsets were converted correctly.
    assert inbound.text == "what's the status of the 🚀 launch?"


def test_group_scopes_follow_the_configured_conversation_scope() -> None:
    inbound = parsed("group_mention")
    per_user_here = channel_request(inbound, channel="telegram")
    scope, _ = scope_for(per_user_here, fresh_key="x")
    assert scope is not None and scope.owner is None
    assert scope.qualifier == "telegram:conversation:-1002233445566"

    shared = channel_request(
        inbound, channel="telegram", conversation_scope=ConversationScope.PER_CONVERSATION
    )
    scope, _ = scope_for(shared, fresh_key="x")
    assert scope is not None and scope.owner == "conversation:telegram:-1002233445566"


@pytest.mark.parametrize(
    ("addressing", "addressed"),
    [
        (Addressing.MENTION_ONLY, False),
        (Addressing.COMMAND_ONLY, False),
        (Addressing.MENTION_OR_COMMAND, False),
        (Addressing.ALL, True),
    ],
)
def test_group_message_without_a_mention(addressing: Addressing, addressed: bool) -> None:
    result = parse_update(fixture("group_without_mention"), bot=BOT, addressing=addressing)
    if addressed:
        assert isinstance(result, Inbound)
        assert result.text == "Lunch at noon? @grace_h"  # another user's mention stays
    else:
        assert result == Ignored(849021733, IgnoreReason.NOT_ADDRESSED)


def test_mention_addressing_modes() -> None:
    data = fixture("group_mention")
    assert isinstance(parse_update(data, bot=BOT, addressing=Addressing.MENTION_ONLY), Inbound)
    assert isinstance(
        parse_update(data, bot=BOT, addressing=Addressing.MENTION_OR_COMMAND), Inbound
    )
    assert parse_update(data, bot=BOT, addressing=Addressing.COMMAND_ONLY) == Ignored(
        849021732, IgnoreReason.NOT_ADDRESSED
    )


def test_a_text_mention_of_the_bot_and_a_reply_to_it_address_it() -> None:
    data = fixture("group_without_mention")
    text = "Agenthost, lunch at noon?"
    data["message"]["text"] = text
    data["message"]["entities"] = [
        {
            "offset": 0,
            "length": 9,
            "type": "text_mention",
            "user": {"id": BOT.id, "is_bot": True, "first_name": "Agenthost"},
        }
    ]
    result = parse_update(data, bot=BOT)
    assert isinstance(result, Inbound) and result.text == "lunch at noon?"

    reply = fixture("group_without_mention")
    reply["message"]["reply_to_message"] = {
        "message_id": 4400,
        "from": {
            "id": BOT.id,
            "is_bot": True,
            "first_name": "Agenthost Test",
            "username": BOT_USERNAME,
        },
        "chat": reply["message"]["chat"],
        "date": 1764075000,
        "text": "Anyone hungry?",
    }
    result = parse_update(reply, bot=BOT)
    assert isinstance(result, Inbound) and result.text == "Lunch at noon? @grace_h"


def test_forum_topic_is_its_own_conversation() -> None:
    inbound = parsed("forum_topic")
    assert inbound.thread_id == 407
    assert inbound.conversation_id == "-1001987654321:407"
    assert inbound.text == "summarize the open issues"
    # The topic's first message is not "a reply to the bot", even if the bot wrote it.
    data = fixture("forum_topic")
    data["message"]["reply_to_message"]["from"] = {
        "id": BOT.id,
        "is_bot": True,
        "first_name": "Agenthost Test",
        "username": BOT_USERNAME,
    }
    data["message"]["text"] = "just chatting"
    del data["message"]["entities"]
    assert parse_update(data, bot=BOT) == Ignored(849021734, IgnoreReason.NOT_ADDRESSED)


def test_command_for_this_bot_loses_its_bot_name() -> None:
    inbound = parsed("command_for_this_bot")
    assert inbound.command is not None
    assert (inbound.command.name, inbound.command.args) == ("new", "")
    assert inbound.command.names_bot
    assert inbound.text == "/new"
    # It names the bot, so it is addressed even where only mentions count.
    assert not inbound.is_direct


def test_command_with_arguments_and_no_bot_name() -> None:
    data = fixture("command_for_this_bot")
    data["message"]["text"] = "/link ABCD-EFGH-JKMN"
    data["message"]["entities"][0]["length"] = 5
    assert parse_update(data, bot=BOT) == Ignored(849021735, IgnoreReason.NOT_ADDRESSED)
    inbound = parse_update(data, bot=BOT, addressing=Addressing.COMMAND_ONLY)
    assert isinstance(inbound, Inbound)
    assert inbound.command is not None and inbound.command.args == "ABCD-EFGH-JKMN"
    assert inbound.text == "/link ABCD-EFGH-JKMN"


@pytest.mark.parametrize("addressing", list(Addressing))
def test_command_for_another_bot_is_ignored_in_every_mode(addressing: Addressing) -> None:
    result = parse_update(fixture("command_for_another_bot"), bot=BOT, addressing=addressing)
    assert result == Ignored(849021736, IgnoreReason.OTHER_BOT)
    # Also in a private chat.
    data = fixture("private_message")
    data["message"]["text"] = "/help@other_helper_bot"
    data["message"]["entities"] = [{"offset": 0, "length": 22, "type": "bot_command"}]
    assert parse_update(data, bot=BOT, addressing=addressing) == Ignored(
        849021731, IgnoreReason.OTHER_BOT
    )


def test_bot_names_compare_without_case() -> None:
    data = fixture("command_for_this_bot")
    data["message"]["text"] = "/new@AgentHost_Test_Bot"
    inbound = parse_update(data, bot=BOT)
    assert isinstance(inbound, Inbound) and inbound.text == "/new"


def test_an_edited_message_is_not_answered_again_by_default() -> None:
    data = fixture("edited_message")
    assert parse_update(data, bot=BOT) == Ignored(data["update_id"], IgnoreReason.EDITED)
    assert isinstance(parse_update(data, bot=BOT, answer_edits=True), Inbound)


def test_migration_service_messages() -> None:
    old, new = -4001, -1004001
    base = {"message_id": 9, "date": 1700000000, "from": {"id": 5, "is_bot": False,
                                                          "first_name": "Ada"}}  # fmt: skip
    in_old = {"update_id": 1, "message": {**base, "chat": {"id": old, "type": "group",
              "title": "g"}, "migrate_to_chat_id": new}}  # fmt: skip
    in_new = {"update_id": 2, "message": {**base, "chat": {"id": new, "type": "supergroup",
              "title": "g"}, "migrate_from_chat_id": old}}  # fmt: skip
    assert migration_of(in_old) == (old, new)
    assert migration_of(in_new) == (old, new)
    assert migration_of(fixture("group_mention")) is None
    assert migration_of({"update_id": 3, "message": {**base, "chat": {"id": old},
                         "migrate_to_chat_id": True}}) is None  # fmt: skip


def test_edited_message() -> None:
    inbound = parsed("edited_message")
    assert inbound.kind == "edited_message"
    assert inbound.text == "Hello there! Can you help me plan a trip to Lisbon?"
    assert channel_request(inbound, channel="telegram").attributes["kind"] == "edited_message"


def test_callback_query() -> None:
    inbound = parsed("callback_query")
    assert inbound.kind == "callback_query"
    assert inbound.callback_query_id == "2202838125737582171"
    assert inbound.text == "book:yes"
    assert inbound.identity("telegram").native_id == "5128442071"  # who pressed, not the bot
    assert inbound.chat_id == 5128442071 and inbound.is_direct


def test_photo_with_caption() -> None:
    inbound = parsed("photo_with_caption")
    assert inbound.text == "What is in this picture?"
    assert len(inbound.files) == 1
    photo = inbound.files[0]
    assert photo.file_id == "AgACAgQAAxkBAAIBb2ZAx_large_1280"  # the largest size
    assert (photo.kind, photo.media_type, photo.size) == ("photo", "image/jpeg", 146503)
    part = UriPart("https://host.example/telegram/files/x?exp=1&sig=y", "image/jpeg")
    request = channel_request(inbound, channel="telegram", file_parts=[part])
    assert request.input[0].parts[-1] == part


def test_a_photo_without_caption_still_counts() -> None:
    data = fixture("photo_with_caption")
    del data["message"]["caption"]
    inbound = parse_update(data, bot=BOT)
    assert isinstance(inbound, Inbound) and inbound.text == "" and inbound.files


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d["message"]["from"].update(is_bot=True), IgnoreReason.FROM_BOT),
        (lambda d: d["message"].pop("text"), IgnoreReason.NO_CONTENT),
        (lambda d: d.update(channel_post=d.pop("message")), IgnoreReason.UNSUPPORTED),
    ],
)
def test_what_is_ignored(mutate: Any, reason: IgnoreReason) -> None:
    data = fixture("private_message")
    mutate(data)
    assert parse_update(data, bot=BOT) == Ignored(849021731, reason)


@pytest.mark.parametrize("payload", [[], {"message": {}}, {"update_id": "7"}, {"update_id": -1}])
def test_malformed_payloads(payload: Any) -> None:
    with pytest.raises(MalformedUpdate):
        parse_update(payload, bot=BOT)


def test_a_message_missing_required_fields_is_malformed() -> None:
    with pytest.raises(MalformedUpdate):
        parse_update({"update_id": 5, "message": {"text": "hi"}}, bot=BOT)


def test_chat_of_reads_the_chat_for_ordering() -> None:
    assert chat_of(fixture("group_mention")) == -1002233445566
    assert chat_of(fixture("callback_query")) == 5128442071
    assert chat_of(fixture("edited_message")) == 5128442071
    assert chat_of({"update_id": 1, "poll": {}}) is None
