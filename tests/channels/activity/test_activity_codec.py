"""The Activity codec on recorded-shape payloads (``fixtures/``): what each activity means
for the bot, the request it becomes, and the outbound activities the bot builds. Pure: no
I/O, no event loop."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from agenthost.channels.activity import codec
from agenthost.channels.activity.codec import Addressing, Greeting, Ignored, IgnoreReason, Inbound
from agenthost.sansio_core.types import UriPart

FIXTURES = Path(__file__).parent / "fixtures"
ADA_AAD = "0a2b4c6d-8e9f-4a1b-9c3d-5e7f9a1b3c5d"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def interpret(name: str, **options: Any) -> Inbound | Greeting | Ignored:
    return codec.interpret(codec.parse(load(name)), **options)


def test_a_personal_teams_message_is_a_direct_turn_from_the_entra_user() -> None:
    inbound = interpret("teams_personal_message")
    assert isinstance(inbound, Inbound)
    assert inbound.text == "Hello **there**"
    assert inbound.user_id == ADA_AAD  # not the 29: channel account id
    assert inbound.from_id.startswith("29:")
    assert inbound.tenant_id == TENANT
    assert inbound.is_direct and inbound.streams
    assert inbound.attachments == ()  # the HTML rendering of the text is not a file
    request = codec.channel_request(inbound, channel="teams", stream=True)
    assert request.identity.native_id == ADA_AAD
    assert request.identity.attributes["tenant_id"] == TENANT
    assert request.session.is_direct
    assert request.session.conversation_id == inbound.conversation_id
    assert request.stream is True
    assert request.attributes["activity_id"] == "1733000000001"


def test_a_group_mention_strips_only_the_bots_markup() -> None:
    inbound = interpret("teams_group_mention")
    assert isinstance(inbound, Inbound)
    assert inbound.text == "can you summarise what Grace Hopper said?"
    assert not inbound.is_direct and not inbound.streams
    request = codec.channel_request(inbound, channel="teams", stream=True)
    assert request.stream is False  # Teams streams only in 1:1 chats
    assert not request.session.is_direct


@pytest.mark.parametrize(
    ("addressing", "answered"),
    [
        (Addressing.MENTION_ONLY, False),
        (Addressing.COMMAND_ONLY, False),
        (Addressing.MENTION_OR_COMMAND, False),
        (Addressing.ALL, True),
    ],
)
def test_a_group_message_for_someone_else(addressing: Addressing, answered: bool) -> None:
    decided = interpret("teams_group_without_mention", addressing=addressing)
    if answered:
        assert isinstance(decided, Inbound) and decided.text == "Grace Hopper lunch?"
    else:
        assert decided == Ignored(IgnoreReason.NOT_ADDRESSED)


def test_a_channel_reply_keeps_its_reply_chain_and_reads_commands() -> None:
    inbound = interpret("teams_channel_reply")
    assert isinstance(inbound, Inbound)
    assert inbound.text == "/new"
    assert inbound.conversation_type == "channel"
    assert inbound.conversation_id.endswith(";messageid=1733000001000")
    command_only = interpret("teams_channel_reply", addressing=Addressing.COMMAND_ONLY)
    assert isinstance(command_only, Inbound)


def test_files_become_attachment_references() -> None:
    inbound = interpret("teams_file_message")
    assert isinstance(inbound, Inbound)
    pdf, image = inbound.attachments
    assert pdf.media_type == "application/pdf" and pdf.name == "report.pdf"
    assert "download.aspx" in pdf.url  # the pre-authenticated download, not the viewer
    assert image.media_type == "application/octet-stream"  # Teams says only "image/*"
    parts = [UriPart("https://host/activity/files/k", "application/pdf")]
    request = codec.channel_request(inbound, channel="teams", file_parts=parts)
    assert request.input[0].parts == tuple(parts)  # no empty text part


def test_an_action_submit_is_a_card_turn() -> None:
    inbound = interpret("teams_action_submit")
    assert isinstance(inbound, Inbound)
    assert inbound.kind == "card_action"
    assert json.loads(inbound.text.removeprefix("[card action] ")) == {
        "choice": "approve",
        "ticket": 4711,
    }


def test_installation_is_a_greeting_and_a_message_from_a_bot_is_ignored() -> None:
    assert interpret("teams_bot_installed") == Greeting("a:1personal", "personal")
    from_bot = load("teams_personal_message")
    from_bot["from"]["role"] = "bot"
    assert codec.interpret(codec.parse(from_bot)) == Ignored(IgnoreReason.FROM_BOT)
    typing = {**load("teams_personal_message"), "type": "typing"}
    assert codec.interpret(codec.parse(typing)) == Ignored(IgnoreReason.UNSUPPORTED)


def test_web_chat_uses_the_channel_account_id() -> None:
    inbound = interpret("webchat_message")
    assert isinstance(inbound, Inbound)
    assert inbound.user_id == "dl_0b1c2d3e4f"
    assert inbound.is_direct and not inbound.streams  # no Teams streaming on Web Chat
    assert inbound.tenant_id is None


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"type": "message"},
        {"type": "", "conversation": {"id": "c"}},
        {**{k: v for k, v in load("teams_personal_message").items() if k != "serviceUrl"}},
        {**load("teams_personal_message"), "conversation": {"id": ""}},
        {**load("teams_personal_message"), "from": {"name": "no id"}},
    ],
)
def test_malformed_activities_are_refused(body: Any) -> None:
    with pytest.raises(codec.MalformedActivity):
        codec.parse(body)


def test_the_conversation_reference_names_what_a_push_needs() -> None:
    reference = codec.reference_of(codec.parse(load("teams_channel_reply")))
    assert reference["serviceUrl"] == "https://smba.trafficmanager.net/amer/"
    assert reference["channelId"] == "msteams"
    assert reference["conversation"]["id"].endswith(";messageid=1733000001000")
    assert reference["bot"]["id"] == "28:7f1d5c3e-0a2b-4c6d-8e9f-0123456789ab"
    assert reference["user"]["aadObjectId"] == ADA_AAD
    assert codec.dedupe_key(codec.parse(load("teams_channel_reply"))) != codec.dedupe_key(
        codec.parse(load("teams_group_mention"))
    )


def test_outbound_activities() -> None:
    reference = codec.reference_of(codec.parse(load("teams_personal_message")))
    answer = codec.message(reference, "**hi**", markdown=True)
    assert answer["type"] == "message" and answer["textFormat"] == "markdown"
    assert answer["conversation"] == {"id": reference["conversation"]["id"]}
    assert answer["from"]["id"] == reference["bot"]["id"]
    quiet = codec.message(reference, "echo", markdown=False, silent=True)
    assert quiet["textFormat"] == "plain"
    assert quiet["channelData"] == {"notification": {"alert": False}}

    informative = codec.stream_update(
        reference, "Working", sequence=1, stream_id=None, informative=True
    )
    assert informative["type"] == "typing"
    assert informative["entities"] == [
        {"type": "streaminfo", "streamType": "informative", "streamSequence": 1}
    ]
    chunk = codec.stream_update(reference, "Hello wor", sequence=2, stream_id="s1")
    assert chunk["entities"][0] == {
        "type": "streaminfo",
        "streamType": "streaming",
        "streamSequence": 2,
        "streamId": "s1",
    }
    assert chunk["channelData"]["streamId"] == "s1"
    final = codec.stream_final(reference, "Hello world", stream_id="s1")
    assert final["type"] == "message"
    assert final["entities"] == [{"type": "streaminfo", "streamId": "s1", "streamType": "final"}]
    assert codec.card_invoke_response("ok") == {
        "statusCode": 200,
        "type": "application/vnd.microsoft.activity.message",
        "value": "ok",
    }


def test_split_text_cuts_at_breaks_within_the_limit() -> None:
    assert codec.split_text("short") == ["short"]
    text = "alpha beta\n\ngamma delta"
    assert codec.split_text(text, limit=12) == ["alpha beta", "gamma delta"]
    assert codec.split_text("abcdefghij", limit=4) == ["abcd", "efgh", "ij"]  # no break
    emoji = "😀" * 5  # two UTF-16 units each
    pieces = codec.split_text(emoji, limit=4)
    assert pieces == ["😀😀", "😀😀", "😀"]
    assert all(codec.utf16_units(p) <= 4 for p in pieces)


def test_the_sdk_does_not_log_refused_payloads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_text = "my password is hunter2"
    with pytest.raises(codec.MalformedActivity):
        # The model refuses the text itself, so its error quotes it.
        codec.parse({"type": "message", "text": [secret_text], "conversation": {"id": "c"}})
    assert secret_text not in caplog.text
