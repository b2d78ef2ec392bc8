"""``TelegramChannel`` as a ``ChannelPush``: where a push goes, how it is rendered, and how
Bot API failures are classified for the delivery worker (against the fake Bot API)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from agenthost import ChannelIdentity
from agenthost.backends.push import ChannelPush, PushMessage, PushOutcome
from agenthost.channels.telegram import TelegramChannel, pushes
from agenthost.channels.telegram.api import BotApi
from agenthost.channels.telegram.rendering import MARKDOWN_V2
from agenthost.sansio_core.delivery import FailureKind
from agenthost.sansio_core.routing import Destination
from tests.channels.telegram.conftest import FAST, fake_bot_api
from tests.channels.telegram.fake_bot_api import FakeBotApi
from tests.channels.telegram.telegram_updates import BOT_TOKEN

pytestmark = pytest.mark.anyio

ADA = 930_000_001


def to(conversation: str | None, native_id: str = str(ADA)) -> Destination:
    return Destination("telegram", ChannelIdentity("telegram", native_id), conversation)


def reply(text: str, **options: object) -> PushMessage:
    return PushMessage("dlv_1", text, **options)  # type: ignore[arg-type]


@asynccontextmanager
async def bot_api(max_attempts: int = 4) -> AsyncIterator[tuple[FakeBotApi, BotApi]]:
    async with fake_bot_api() as (fake, api_url), httpx.AsyncClient() as http:
        yield (
            fake,
            BotApi(
                http,
                BOT_TOKEN,
                base_url=api_url,
                clock=time.monotonic,
                pacing=FAST,
                max_attempts=max_attempts,
            ),
        )


async def push(api: BotApi, destination: Destination, message: PushMessage) -> PushOutcome:
    return await pushes.push(api, destination, message, parse_mode=MARKDOWN_V2)


def test_the_channel_is_a_non_idempotent_pusher() -> None:
    channel = TelegramChannel(BOT_TOKEN, mode="polling")
    assert isinstance(channel, ChannelPush)
    assert channel.push_is_idempotent is False


async def test_a_channel_not_started_answers_transient() -> None:
    channel = TelegramChannel(BOT_TOKEN, mode="polling")
    outcome = await channel.push(to(str(ADA)), reply("hi"))
    assert outcome.failure is FailureKind.TRANSIENT


@pytest.mark.parametrize(
    ("conversation", "native_id", "expected"),
    [
        ("123", "9", (123, None)),
        ("-100123:7", "9", (-100123, 7)),
        (None, "456", (456, None)),  # a private chat has the user's id
        ("", "456", (456, None)),
        ("not-a-chat", "9", None),
        ("1:x", "9", None),
    ],
)
def test_the_destination_names_the_chat_and_topic(
    conversation: str | None, native_id: str, expected: tuple[int, int | None] | None
) -> None:
    assert pushes.chat_of(to(conversation, native_id)) == expected


async def test_a_reply_is_rendered_markdown_to_the_chat_and_topic() -> None:
    async with bot_api() as (fake, api):
        outcome = await push(api, to("-100777:42"), reply("**done**: see `x`"))
        assert outcome == PushOutcome.ok()
        [sent] = fake.sent_to(-100777)
        assert sent.text == "done: see x"
        assert sent.parse_mode == MARKDOWN_V2
        assert sent.thread_id == 42
        assert {e.type for e in sent.entities} >= {"bold", "code"}
        [call] = fake.called("sendMessage")
        assert "disable_notification" not in call.params


async def test_an_echo_is_plain_and_silent() -> None:
    async with bot_api() as (fake, api):
        text = "You, via Invocations: what is 2*3*4 _now_?"
        assert await push(api, to(None), reply(text, is_echo=True, silent=True)) == (
            PushOutcome.ok()
        )
        [sent] = fake.sent_to(ADA)
        assert sent.text == text and sent.parse_mode is None
        [call] = fake.called("sendMessage")
        assert call.params["disable_notification"] is True


async def test_a_long_reply_is_split_into_messages_of_at_most_4096() -> None:
    async with bot_api() as (fake, api):
        text = "\n\n".join(f"Paragraph {i}: " + "word " * 150 for i in range(12))
        assert await push(api, to(str(ADA)), reply(text)) == PushOutcome.ok()
        sent = fake.sent_to(ADA)
        assert len(sent) >= 2
        assert all(len(m.text) <= 4096 for m in sent)
        assert "Paragraph 0:" in sent[0].text and "Paragraph 11:" in sent[-1].text


async def test_refused_formatting_falls_back_to_plain_text() -> None:
    async with bot_api() as (fake, api):
        fake.reject_formatting = 1
        assert await push(api, to(str(ADA)), reply("**bold** answer")) == PushOutcome.ok()
        [sent] = fake.sent_to(ADA)
        assert sent.parse_mode is None and sent.text == "bold answer"


async def test_a_migrated_group_is_followed() -> None:
    async with bot_api() as (fake, api):
        fake.migrations[-500] = -100500
        assert await push(api, to("-500"), reply("hello group")) == PushOutcome.ok()
        assert [m.text for m in fake.sent_to(-100500)] == ["hello group"]
        # The client remembers the new id: the next push goes straight there.
        assert await push(api, to("-500"), reply("again")) == PushOutcome.ok()
        assert [c.params["chat_id"] for c in fake.called("sendMessage")][-1] == -100500


async def test_a_blocked_bot_and_a_missing_chat_are_permanent() -> None:
    async with bot_api() as (fake, api):
        fake.blocked.add(ADA)
        blocked = await push(api, to(str(ADA)), reply("hi"))
        assert blocked.failure is FailureKind.PERMANENT
        assert blocked.reason is not None and "blocked" in blocked.reason
        fake.missing_chats.add(ADA + 1)
        missing = await push(api, to(str(ADA + 1)), reply("hi"))
        assert missing.failure is FailureKind.PERMANENT
        assert missing.reason is not None and "chat not found" in missing.reason
        unknown = await push(api, to("nowhere"), reply("hi"))
        assert unknown.failure is FailureKind.PERMANENT
        assert len(fake.called("sendMessage")) == 2  # no call for a destination without a chat


async def test_a_rate_limit_is_transient_with_retry_after_and_not_waited_out() -> None:
    async with bot_api() as (fake, api):
        fake.rate_limit("sendMessage", chat_id=ADA, retry_after=30)
        started = time.monotonic()
        outcome = await push(api, to(str(ADA)), reply("hi"))
        assert time.monotonic() - started < 5.0
        assert outcome.failure is FailureKind.TRANSIENT
        assert outcome.retry_after == 30.0
        assert len(fake.called("sendMessage")) == 1


async def test_server_and_network_failures_are_transient() -> None:
    async with bot_api() as (fake, api):
        fake.server_errors = 1
        outcome = await push(api, to(str(ADA)), reply("hi"))
        assert outcome.failure is FailureKind.TRANSIENT
        assert outcome.retry_after is None
        assert await push(api, to(str(ADA)), reply("hi")) == PushOutcome.ok()
    async with httpx.AsyncClient() as http:
        offline = BotApi(
            http,
            BOT_TOKEN,
            base_url="http://127.0.0.1:9",
            clock=time.monotonic,
            pacing=FAST,
            max_attempts=1,
        )
        outcome = await push(offline, to(str(ADA)), reply("hi"))
        assert outcome.failure is FailureKind.TRANSIENT
