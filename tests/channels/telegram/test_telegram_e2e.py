"""The Telegram channel end to end: a fake Bot API and the host, both served on loopback.

Every test runs in webhook mode and in polling mode (the ``mode`` fixture), under asyncio
or trio (``AGENTHOST_TEST_BACKEND``). Updates reach the channel exactly as Telegram would
send them; what the bot sends back is what the fake received, parsed as Telegram parses it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import pytest

from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.demo import build_agent
from agenthost.sansio_core.commands import NEW_CONVERSATION
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.telegram.conftest import (
    TIMEOUT,
    Recorder,
    fake_bot_api,
    telegram_host,
)
from tests.channels.telegram.telegram_updates import (
    BOT_USERNAME,
    group_chat,
    message,
    private_chat,
)

pytestmark = pytest.mark.anyio

_users = itertools.count(910_000_001)


def new_user() -> int:
    return next(_users)


# --- conversations ---------------------------------------------------------------------


async def test_a_private_conversation_continues(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(build_agent(), tmp_path, mode, fake, api_url) as bot,
        ):
            chat = private_chat(ada)
            first = message(fake.next_update_id(), user_id=ada, chat=chat, text="hello")
            assert await bot.exchange(first, ada) == [
                'You said: "hello" (message 1 of this conversation)'
            ]
            again = message(
                fake.next_update_id(), user_id=ada, chat=chat, text="what did I say first?"
            )
            assert await bot.exchange(again, ada) == ['You first said: "hello"']
            # The answers were streamed as drafts before they were sent.
            drafts = fake.called("sendMessageDraft")
            assert drafts and all(c.params["chat_id"] == ada for c in drafts)
            assert all(m.reply_to is None for m in fake.sent_to(ada))


async def test_new_starts_a_fresh_session(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(
                target,
                tmp_path,
                mode,
                fake,
                api_url,
                host_options={"linker": OneTimeCodeLinker()},
            ) as bot,
        ):
            chat = private_chat(ada)
            await bot.exchange(
                message(fake.next_update_id(), user_id=ada, chat=chat, text="one"), ada
            )
            await bot.exchange(
                message(fake.next_update_id(), user_id=ada, chat=chat, text="two"), ada
            )
            assert target.calls[-1] == ["one", "one", "two"]  # user, assistant, user
            reset = await bot.exchange(
                message(fake.next_update_id(), user_id=ada, chat=chat, text="/new"), ada
            )
            assert reset == [NEW_CONVERSATION]
            answer = await bot.exchange(
                message(fake.next_update_id(), user_id=ada, chat=chat, text="three"), ada
            )
            assert target.calls[-1] == ["three"]
            assert answer == ["three"]
            assert len(target.calls) == 3  # /new never reached the target

            # The host's commands are in the menu; groups do not offer /link.
            private_menu = [c["command"] for c in fake.commands[("all_private_chats", "")]]
            group_menu = [c["command"] for c in fake.commands[("all_group_chats", "")]]
            assert {"link", "unlink", "new", "help"} <= set(private_menu)
            assert "new" in group_menu and "link" not in group_menu


async def test_new_named_for_this_bot_works_in_a_group(tmp_path: Path, mode: str) -> None:
    grace, group = new_user(), -1_001_000_000_000 - new_user()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(
                target,
                tmp_path,
                mode,
                fake,
                api_url,
                host_options={"linker": OneTimeCodeLinker()},
            ) as bot,
        ):
            chat = group_chat(group)

            def say(text: str) -> dict[str, object]:
                return message(fake.next_update_id(), user_id=grace, chat=chat, text=text)

            await bot.exchange(say(f"@{BOT_USERNAME} one"), group)
            assert await bot.exchange(say(f"/new@{BOT_USERNAME}"), group) == [NEW_CONVERSATION]
            await bot.exchange(say(f"@{BOT_USERNAME} two"), group)
            assert target.calls == [["one"], ["two"]]


async def test_a_group_message_without_a_mention_is_ignored(tmp_path: Path, mode: str) -> None:
    grace, group = new_user(), -1_002_000_000_000 - new_user()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            chat = group_chat(group)
            await bot.send(
                message(fake.next_update_id(), user_id=grace, chat=chat, text="lunch at noon?")
            )
            await bot.send(
                message(
                    fake.next_update_id(),
                    user_id=grace,
                    chat=chat,
                    text="/start@other_helper_bot",
                )
            )
            await bot.idle()
            await fake.settle()
            assert target.calls == []
            assert fake.sent_to(group) == []
            assert not fake.called("sendChatAction")

            addressed = message(
                fake.next_update_id(),
                user_id=grace,
                chat=chat,
                text=f"@{BOT_USERNAME} what's for lunch?",
            )
            assert await bot.exchange(addressed, group) == ["what's for lunch?"]
            assert target.calls == [["what's for lunch?"]]
            # In a group the answer replies to the message that asked.
            assert fake.sent_to(group)[0].reply_to == addressed["message"]["message_id"]
            records = await bot.host.store.list_channel_records("telegram", "seen")
            assert len(records) == 1  # ignored updates are acknowledged, not stored


async def test_a_redelivered_update_runs_the_target_once(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    target = Recorder()
    store = SQLiteStore(tmp_path / "state.db")
    with anyio.fail_after(TIMEOUT):
        async with fake_bot_api() as (fake, api_url):
            update = message(
                fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="only once"
            )
            async with telegram_host(target, tmp_path, mode, fake, api_url, store=store) as bot:
                if mode == "webhook":
                    await bot.exchange(update, ada)
                    await bot.send(update)  # Telegram retries: acknowledged, not run
                else:
                    fake.enqueue(update)  # the same update twice in one batch
                    await bot.exchange(update, ada)
                await bot.idle()
                await fake.settle()
                assert target.calls == [["only once"]]
                assert len(fake.sent_to(ada)) == 1

            # After a restart the update is still known, even with the cursor lost.
            await store.delete_channel_records("telegram", "cursor", prefix="")
            async with telegram_host(target, tmp_path, mode, fake, api_url, store=store) as bot:
                await bot.send(update)
                await bot.idle()
                await fake.settle()
                assert target.calls == [["only once"]]
                assert len(fake.sent_to(ada)) == 1


async def test_a_webhook_post_without_the_secret_is_refused(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            update = message(
                fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="let me in"
            )
            url = f"{bot.base_url}/telegram/webhook"
            if mode == "polling":
                # No webhook route at all while polling.
                fake.webhook_url = url
                assert (await fake.deliver(update, secret=None)).status_code in (404, 405)
                fake.webhook_url = ""
            else:
                for secret in (None, "", "wrong-secret", fake.webhook_secret + "x"):
                    response = await fake.deliver(update, secret=secret)
                    assert response.status_code == 401
                # A refused body is never parsed: garbage with a wrong secret is 401 too.
                assert (await fake.deliver({"not": "an update"}, secret="nope")).status_code == 401
            await fake.settle()
            assert target.calls == []
            for kind in ("inbox", "seen"):
                assert await bot.host.store.list_channel_records("telegram", kind) == []
            if mode == "webhook":
                assert await bot.exchange(update, ada) == ["let me in"]


async def test_a_5000_character_answer_arrives_as_two_messages(tmp_path: Path, mode: str) -> None:
    ada, group = new_user(), -1_003_000_000_000 - new_user()
    paragraph = "Plain words make up most of this answer, with one **bold** word. "
    half = (paragraph * 38).strip()
    answer = f"{half}\n\n{half}"
    assert 4900 < len(answer) < 5100
    target = Recorder(reply=lambda _: answer)
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            for chat_id, chat, text in (
                (ada, private_chat(ada), "long please"),
                (group, group_chat(group), f"@{BOT_USERNAME} long please"),
            ):
                update = message(fake.next_update_id(), user_id=ada, chat=chat, text=text)
                texts = await bot.exchange(update, chat_id, count=2)
                await fake.settle()
                sent = fake.sent_to(chat_id)
                assert len(sent) == 2, [len(m.text) for m in sent]
                for part in sent:
                    assert part.parse_mode == "MarkdownV2"
                    assert len(part.text) <= 4096
                    assert [e.type for e in part.entities].count("bold") == 38
                visible = half.replace("**", "")
                assert [m.text for m in sent] == texts == [visible, visible]


async def test_rejected_markdown_arrives_as_plain_text(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    target = Recorder(reply=lambda _: "**Hello** _world_, see [the docs](https://e.com/d).")
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            fake.reject_formatting = 1
            update = message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="hi")
            assert await bot.exchange(update, ada) == [
                "Hello world, see the docs (https://e.com/d)."
            ]
            refused = [c for c in fake.called("sendMessage") if c.status == 400]
            assert len(refused) == 1 and refused[0].params["parse_mode"] == "MarkdownV2"
            assert fake.sent_to(ada)[0].parse_mode is None


async def test_a_429_is_honoured(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    target = Recorder(reply=lambda _: "after the wait")
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            fake.rate_limit("sendMessage", chat_id=ada, times=1, retry_after=1)
            update = message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="hi")
            assert await bot.exchange(update, ada) == ["after the wait"]
            attempts = fake.called("sendMessage")
            assert [c.status for c in attempts] == [429, 200]
            assert attempts[1].at - attempts[0].at >= 0.95
