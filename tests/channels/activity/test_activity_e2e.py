"""The Activity channel end to end: Teams-shaped activities with real tokens from the fake
issuer, answered through the fake Bot Connector with a token from the fake Entra.

Personal chat, a group chat mention, a channel thread, commands, card actions,
installation greetings, Teams streaming, files and redeliveries; under the event loop
``make test`` chose (``AGENTHOST_TEST_BACKEND``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from agenthost import HostMessage
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.sansio_core.types import ChannelRequest, UriPart
from tests.channels.activity.conftest import (
    TIMEOUT,
    Recorder,
    activity_host,
    bot_framework,
)
from tests.channels.activity.fake_bot_framework import FILE_BYTES, SCOPE
from tests.channels.activity.teams_activities import (
    BOT,
    TENANT,
    card_action,
    channel_conversation,
    group_conversation,
    installed,
    message,
    new_user,
    personal_conversation,
)
from tests.channels.activity.tls import LoopbackCertificate

pytestmark = pytest.mark.anyio


class Requests:
    """A ``run_hook`` that keeps the requests the host passed to the target."""

    def __init__(self) -> None:
        self.seen: list[ChannelRequest] = []

    async def __call__(self, request: ChannelRequest, **_: Any) -> ChannelRequest:
        self.seen.append(request)
        return request


async def test_a_personal_chat_is_answered_and_continues(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target, hook = Recorder(), Requests()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services, host_options={"run_hook": hook}) as bot,
        ):
            url = services.service.service_url
            [first] = await bot.exchange(message(ada, chat, "hello **there**", service_url=url))
            assert first.text == "hello **there**"
            assert first.activity["textFormat"] == "markdown"
            assert first.reply_to is None  # 1:1: a plain send into the chat
            assert first.activity["recipient"]["id"] == ada.id
            assert first.activity["from"]["id"] == BOT["id"]
            [second] = await bot.exchange(message(ada, chat, "and again", service_url=url))
            assert second.text == "hello **there** | and again"  # one session

            # The user is their Entra object id, with the tenant as an attribute.
            identity = hook.seen[0].identity
            assert identity.channel == "activity"
            assert identity.native_id == ada.aad_object_id
            assert identity.attributes["tenant_id"] == TENANT
            assert hook.seen[0].session.is_direct
            # One token from Entra (client credentials, the Bot Framework scope), reused.
            [grant] = services.entra.token_requests
            assert grant["grant_type"] == "client_credentials"
            assert grant["scope"] == SCOPE and grant["tenant"] == "botframework.com"


async def test_a_group_chat_answers_only_when_mentioned(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, grace, chat = new_user(), new_user("Grace Hopper"), group_conversation()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services) as bot,
        ):
            url = services.service.service_url
            ignored = await bot.post(message(ada, chat, "just chatting", service_url=url))
            assert ignored.status_code == 200
            await bot.idle()
            assert target.calls == []

            asked = message(
                ada, chat, "what is <at>Grace</at> doing?", service_url=url, mention_bot=True
            )
            [answer] = await bot.exchange(asked)
            # The bot's mention is gone; another person's keeps the name it shows.
            assert target.calls == [["what is Grace doing?"]]
            assert answer.reply_to == asked["id"]  # the reply answers the user's message
            assert answer.activity["replyToId"] == asked["id"]

            # Another member of the group has a session of their own (per user, per chat).
            [other] = await bot.exchange(
                message(grace, chat, "hi", service_url=url, mention_bot=True)
            )
            assert other.text == "hi"


async def test_a_channel_thread_is_its_own_conversation(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada = new_user()
    thread, other_thread = (
        channel_conversation("1733000000001"),
        channel_conversation("1733000000002"),
    )
    other_thread["id"] = thread["id"].split(";")[0] + ";messageid=1733000000002"
    target, hook = Recorder(), Requests()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services, host_options={"run_hook": hook}) as bot,
        ):
            url = services.service.service_url
            [one] = await bot.exchange(
                message(ada, thread, "first", service_url=url, mention_bot=True)
            )
            [two] = await bot.exchange(
                message(ada, other_thread, "second", service_url=url, mention_bot=True)
            )
            assert one.conversation_id == thread["id"]
            assert two.conversation_id == other_thread["id"]
            assert two.text == "second"  # the other reply chain did not see "first"
            assert not hook.seen[0].session.is_direct
            assert hook.seen[0].session.conversation_id == thread["id"]


async def test_host_commands_work_here(tmp_path: Path, certificate: LoopbackCertificate) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(
                target, tmp_path, services, host_options={"linker": OneTimeCodeLinker()}
            ) as bot,
        ):
            url = services.service.service_url
            [help_text] = await bot.exchange(message(ada, chat, "/help", service_url=url))
            assert "/link" in help_text.text and "/new" in help_text.text
            assert help_text.activity["textFormat"] == "plain"
            await bot.exchange(message(ada, chat, "remember me", service_url=url))
            await bot.exchange(message(ada, chat, "/new", service_url=url))
            [fresh] = await bot.exchange(message(ada, chat, "who am I?", service_url=url))
            assert fresh.text == "who am I?"  # /new started a fresh session
            [code] = await bot.exchange(message(ada, chat, "/link", service_url=url))
            assert "/link " in code.text
            # In a group, the bot's mention is removed before the host reads the command.
            group = group_conversation()
            [group_help] = await bot.exchange(
                message(ada, group, "/help", service_url=url, mention_bot=True)
            )
            assert "/new" in group_help.text
            assert target.calls == [["remember me"], ["who am I?"]]


async def test_a_card_action_is_a_turn_with_a_proper_invoke_response(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder(reply=lambda text: f"got {text}")
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services) as bot,
        ):
            url = services.service.service_url
            press = card_action(ada, chat, service_url=url, verb="approve", data={"request": 42})
            response = await bot.post(press)
            assert response.status_code == 200
            body = response.json()
            assert body["statusCode"] == 200
            assert body["type"] == "application/vnd.microsoft.activity.message"
            await services.service.wait_until(
                lambda: bool(services.service.messages_to(chat["id"]))
            )
            await bot.idle()
            [[said]] = target.calls
            assert said.startswith("[card action] ")
            assert json.loads(said.removeprefix("[card action] ")) == {
                "data": {"request": 42},
                "verb": "approve",
            }

            # Any other invoke is answered for what it is, never a silent 200.
            other = dict(press, name="composeExtension/query", id="f:1")
            refused = await bot.post(other)
            assert refused.status_code == 501
            assert refused.json()["error"]["code"] == "NotImplemented"


async def test_installation_greets_and_stores_the_reference(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(Recorder(), tmp_path, services, greeting="Hi! Ask me anything.") as bot,
        ):
            url = services.service.service_url
            [hello] = await bot.exchange(installed(chat, ada, service_url=url))
            assert hello.text == "Hi! Ask me anything."
            stored = await bot.host.store.get_channel_record("activity", "ref", chat["id"])
            assert stored is not None
            assert stored.value["serviceUrl"] == url
            assert stored.value["user"]["aadObjectId"] == ada.aad_object_id


async def test_a_redelivered_activity_runs_once(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(target, tmp_path, services) as bot,
        ):
            url = services.service.service_url
            activity = message(ada, chat, "once", service_url=url)
            await bot.exchange(activity)
            again = await bot.post(activity)
            assert again.status_code == 200
            await bot.idle()
            assert target.calls == [["once"]]
            assert len(services.service.messages_to(chat["id"])) == 1


async def test_teams_streaming_in_a_personal_chat(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()

    async def streaming(messages: list[HostMessage]) -> AsyncIterator[str]:
        for piece in ("Once", " upon", " a time."):
            yield piece
            await anyio.sleep(0.6)

    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(streaming, tmp_path, services, stream=True, stream_interval=0.5) as bot,
        ):
            url = services.service.service_url
            await bot.exchange(message(ada, chat, "tell me a story", service_url=url))
            sent = services.service.sent_to(chat["id"])
            informative, *chunks, final = sent
            # (1) informative: typing + streaminfo, sequence 1; its id is the stream id.
            assert informative.type == "typing"
            assert informative.stream_info == {
                "type": "streaminfo",
                "streamType": "informative",
                "streamSequence": 1,
            }
            stream_id = informative.id
            # (2) chunks: typing, the same stream, increasing sequence, cumulative text.
            assert len(chunks) >= 2
            assert all(c.type == "typing" for c in chunks)
            assert all(c.stream_info and c.stream_info["streamType"] == "streaming" for c in chunks)
            assert all(c.stream_info and c.stream_info["streamId"] == stream_id for c in chunks)
            sequences = [c.stream_info["streamSequence"] for c in chunks if c.stream_info]
            assert sequences == list(range(2, 2 + len(chunks)))
            texts = [c.text for c in chunks]
            assert texts[0] == "Once"
            assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
            assert all(b.at - a.at >= 0.45 for a, b in itertools.pairwise(chunks))  # throttled
            # (3) the final message closes the stream with the whole answer.
            assert final.type == "message"
            assert final.text == "Once upon a time."
            assert final.stream_info == {
                "type": "streaminfo",
                "streamId": stream_id,
                "streamType": "final",
            }
            assert final.activity["channelData"]["streamType"] == "final"


async def test_group_replies_are_not_streamed(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), group_conversation()

    async def streaming(messages: list[HostMessage]) -> AsyncIterator[str]:
        for piece in ("one", " two"):
            yield piece
            await anyio.sleep(0.6)

    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(streaming, tmp_path, services, stream=True, stream_interval=0.5) as bot,
        ):
            url = services.service.service_url
            await bot.exchange(message(ada, chat, "count", service_url=url, mention_bot=True))
            sent = services.service.sent_to(chat["id"])
            assert [r.type for r in sent] == ["message"]
            assert sent[0].text == "one two" and sent[0].stream_info is None


async def test_the_typing_indicator_shows_while_the_target_runs(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), group_conversation()

    async def slow(messages: list[HostMessage]) -> str:
        await anyio.sleep(0.5)
        return "done"

    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(slow, tmp_path, services, typing_delay=0.05) as bot,
        ):
            url = services.service.service_url
            await bot.exchange(message(ada, chat, "work", service_url=url, mention_bot=True))
            kinds = [r.type for r in services.service.sent_to(chat["id"])]
            assert kinds[0] == "typing" and kinds[-1] == "message"


async def test_a_file_reaches_the_target_as_a_host_url(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    target = Recorder(reply=lambda text: "seen")
    with anyio.fail_after(TIMEOUT):
        async with bot_framework(certificate) as services:
            url = services.service.service_url
            file_url = f"{services.service.base_url}/amer/files/cat.png"
            activity = message(
                ada,
                chat,
                "look",
                service_url=url,
                attachments=[
                    {"contentType": "image/png", "contentUrl": file_url, "name": "cat.png"}
                ],
            )
            async with activity_host(
                target, tmp_path, services, public_url="http://placeholder"
            ) as bot:
                bot.channel.public_url = str(bot.client.base_url).rstrip("/")
                await bot.exchange(activity)
                [[_, part]] = [m.parts for m in target.inputs[0]]
                assert isinstance(part, UriPart) and part.media_type == "image/png"
                assert part.uri.startswith(bot.channel.public_url + "/activity/files/")
                assert file_url not in part.uri
                async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                    fetched = await client.get(part.uri)
                    assert fetched.status_code == 200 and fetched.content == FILE_BYTES
                    assert fetched.headers["x-content-type-options"] == "nosniff"
                    missing = await client.get(part.uri[:-4] + "xxxx")
                    assert missing.status_code == 404
                # The connector's file was fetched with the bot token, by the host.
                [authorization] = services.service.file_requests
                assert authorization is not None and authorization.startswith("Bearer ")


async def test_a_command_in_a_streaming_chat_is_one_plain_message(
    tmp_path: Path, certificate: LoopbackCertificate
) -> None:
    ada, chat = new_user(), personal_conversation()
    with anyio.fail_after(TIMEOUT):
        async with (
            bot_framework(certificate) as services,
            activity_host(Recorder(), tmp_path, services, stream=True) as bot,
        ):
            url = services.service.service_url
            [help_text] = await bot.exchange(message(ada, chat, "/help", service_url=url))
            assert [r.type for r in services.service.sent_to(chat["id"])] == ["message"]
            assert help_text.stream_info is None
            assert help_text.activity["textFormat"] == "plain"
