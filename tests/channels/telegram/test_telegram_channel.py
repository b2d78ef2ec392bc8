"""More of the Telegram channel end to end: streaming, topics, callbacks, failures on the
platform's side, polling conflicts and recovery after a crash. Same harness as
``test_telegram_e2e.py``: a fake Bot API and the host, both served on loopback, in webhook
and polling mode, under asyncio or trio."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from agenthost import ChannelCommand, HostMessage
from agenthost.stores.base import ChannelRecord
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.telegram.conftest import (
    TIMEOUT,
    Recorder,
    fake_bot_api,
    telegram_host,
)
from tests.channels.telegram.telegram_updates import (
    BOT_TOKEN,
    BOT_USERNAME,
    fixture,
    group_chat,
    message,
    private_chat,
)

pytestmark = pytest.mark.anyio

_users = itertools.count(920_000_001)


def new_user() -> int:
    return next(_users)


def new_group() -> int:
    return -1_005_000_000_000 - next(_users)


class Gated:
    """Streams ``Hello `` at once, then waits for ``release`` before ``**world**``."""

    def __init__(self) -> None:
        self.release = anyio.Event()

    async def __call__(self, messages: list[HostMessage]) -> AsyncIterator[str]:
        yield "Hello "
        await self.release.wait()
        yield "**world**"


async def test_streaming_uses_drafts_in_private_chats(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    target = Gated()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            await bot.send(
                message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="hi")
            )
            await fake.wait_until(lambda: bool(fake.called("sendMessageDraft")))
            draft = fake.called("sendMessageDraft")[0]
            assert draft.params["text"] == "Hello" and draft.params["draft_id"] != 0
            assert fake.sent_to(ada) == []  # a draft is not a message
            target.release.set()
            await fake.wait_until(lambda: len(fake.sent_to(ada)) == 1)
            final = fake.sent_to(ada)[0]
            assert final.text == "Hello world"
            assert [e.type for e in final.entities] == ["bold"]


async def test_typing_is_shown_while_a_slow_target_runs(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    release = anyio.Event()

    async def slow(messages: list[HostMessage]) -> str:
        await release.wait()
        return "done"

    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(slow, tmp_path, mode, fake, api_url, typing_delay=0.1) as bot,
        ):
            await bot.send(
                message(
                    fake.next_update_id(),
                    user_id=ada,
                    chat=private_chat(ada),
                    text="take your time",
                )
            )
            await fake.wait_until(lambda: bool(fake.called("sendChatAction")))
            [typing] = fake.called("sendChatAction")
            assert typing.params == {"chat_id": ada, "action": "typing"}
            release.set()
            await fake.wait_until(lambda: len(fake.sent_to(ada)) == 1)
            await bot.idle()
            await fake.settle()
            assert len(fake.called("sendChatAction")) == 1  # no typing after the answer


async def test_an_instant_answer_needs_no_typing(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(Recorder(), tmp_path, mode, fake, api_url) as bot,
        ):
            update = message(
                fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="quick"
            )
            assert await bot.exchange(update, ada) == ["quick"]
            await fake.settle(quiet=0.6)
            assert not fake.called("sendChatAction")


async def test_streaming_edits_one_message_in_groups(tmp_path: Path, mode: str) -> None:
    grace, group = new_user(), new_group()
    target = Gated()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            asked = message(
                fake.next_update_id(),
                user_id=grace,
                chat=group_chat(group),
                text=f"@{BOT_USERNAME} hi",
            )
            await bot.send(asked)
            await fake.wait_until(lambda: len(fake.sent_to(group)) == 1)
            preview = fake.sent_to(group)[0]
            assert preview.text == "Hello"
            assert preview.reply_to == asked["message"]["message_id"]
            assert not fake.called("sendMessageDraft")  # drafts are for private chats
            target.release.set()
            await fake.wait_until(lambda: preview.text == "Hello world")
            await bot.idle()
            assert len(fake.sent_to(group)) == 1 and preview.edits >= 1


async def test_a_forum_topic_is_answered_in_its_topic(tmp_path: Path, mode: str) -> None:
    grace, forum = new_user(), new_group()
    target = Recorder(thinks=0.3)  # long enough to show "typing..." in the topic
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url, typing_delay=0) as bot,
        ):
            chat = group_chat(forum, forum=True)
            in_topic = message(
                fake.next_update_id(),
                user_id=grace,
                chat=chat,
                thread_id=407,
                text=f"@{BOT_USERNAME} in the topic",
            )
            assert await bot.exchange(in_topic, forum) == ["in the topic"]
            sent = fake.sent_to(forum)[0]
            assert sent.thread_id == 407
            actions = fake.called("sendChatAction")
            assert actions and actions[0].params["message_thread_id"] == 407
            # Another topic of the same forum is another conversation.
            other = message(
                fake.next_update_id(),
                user_id=grace,
                chat=chat,
                thread_id=512,
                text=f"@{BOT_USERNAME} elsewhere",
            )
            assert await bot.exchange(other, forum) == ["elsewhere"]
            assert target.calls == [["in the topic"], ["elsewhere"]]


async def test_an_edited_message_is_not_answered_again(tmp_path: Path, mode: str) -> None:
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            edited = fixture("edited_message")
            edited["update_id"] = fake.next_update_id()
            ada = edited["edited_message"]["chat"]["id"]
            await bot.send(edited)
            await bot.idle()
            await fake.settle()
            assert fake.sent_to(ada) == []
            assert target.calls == []


async def test_callback_queries_and_edited_messages(tmp_path: Path, mode: str) -> None:
    # with answer_edits=True an edit is a new message for the target
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url, answer_edits=True) as bot,
        ):
            pressed = fixture("callback_query")
            pressed["update_id"] = fake.next_update_id()
            ada = pressed["callback_query"]["from"]["id"]
            assert await bot.exchange(pressed, ada) == ["book:yes"]
            answered = fake.called("answerCallbackQuery")
            assert [c.params["callback_query_id"] for c in answered] == [
                pressed["callback_query"]["id"]
            ]
            edited = fixture("edited_message")
            edited["update_id"] = fake.next_update_id()
            assert await bot.exchange(edited, ada) == [
                "book:yes | Hello there! Can you help me plan a trip to Lisbon?"
            ]


async def test_html_parse_mode(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    target = Recorder(reply=lambda _: "**a < b** & `c`")
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url, parse_mode="HTML") as bot,
        ):
            update = message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="hi")
            assert await bot.exchange(update, ada) == ["a < b & c"]
            sent = fake.sent_to(ada)[0]
            assert sent.parse_mode == "HTML"
            assert [e.type for e in sent.entities] == ["bold", "code"]


async def test_a_failing_target_gets_an_apology(tmp_path: Path, mode: str) -> None:
    ada = new_user()

    async def broken(messages: list[HostMessage]) -> str:
        raise RuntimeError("secret details")

    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(broken, tmp_path, mode, fake, api_url) as bot,
        ):
            update = message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="hi")
            [answer] = await bot.exchange(update, ada)
            assert answer.startswith("Sorry") and "secret" not in answer
            assert await bot.host.store.list_channel_records("telegram", "inbox") == []


async def test_a_blocked_user_is_a_permanent_failure(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    ada, grace = new_user(), new_user()
    target = Recorder()
    caplog.set_level(logging.INFO, logger="agenthost.channels.telegram")
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            fake.blocked.add(ada)
            await bot.send(
                message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="hi")
            )
            await bot.idle()
            attempts = [c for c in fake.called("sendMessage") if c.params["chat_id"] == ada]
            assert [c.status for c in attempts] == [403]  # not retried
            assert target.calls == [["hi"]]
            failures = [r for r in caplog.records if r.msg == "telegram reply not delivered"]
            assert failures and failures[0].permanent is True  # type: ignore[attr-defined]
            assert failures[0].error_type == "Forbidden"  # type: ignore[attr-defined]
            # Nothing is stuck, and other chats carry on.
            assert await bot.host.store.list_channel_records("telegram", "inbox") == []
            update = message(
                fake.next_update_id(),
                user_id=grace,
                chat=private_chat(grace, "Grace"),
                text="still here?",
            )
            assert await bot.exchange(update, grace) == ["still here?"]


async def test_a_migrated_group_is_followed(tmp_path: Path, mode: str) -> None:
    grace, old, new = new_user(), -4_000_000_000 - new_user(), new_group()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url) as bot,
        ):
            fake.migrations[old] = new
            chat = {"id": old, "title": "Old group", "type": "group"}
            update = message(
                fake.next_update_id(),
                user_id=grace,
                chat=chat,
                text=f"@{BOT_USERNAME} are you there?",
            )
            assert await bot.exchange(update, new) == ["are you there?"]
            to_old = [c for c in fake.calls if c.params.get("chat_id") == old]
            # The typing action and the first send may both meet the old id; no more.
            assert 1 <= len(to_old) <= 2 and {c.status for c in to_old} == {400}
            second = message(
                fake.next_update_id(), user_id=grace, chat=chat, text=f"@{BOT_USERNAME} again"
            )
            await bot.exchange(second, new)
            assert [c for c in fake.calls if c.params.get("chat_id") == old] == to_old


async def test_commands_menu_with_the_applications_own_commands(tmp_path: Path, mode: str) -> None:
    target = Recorder()
    weather = ChannelCommand("weather", "Today's weather")
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(
                target,
                tmp_path,
                mode,
                fake,
                api_url,
                commands=[weather],
                command_languages={"de": {"weather": "Das Wetter heute"}},
            ),
        ):
            # No linker: the host's /new and /help (always there), then the application's.
            host_commands = [
                {"command": "new", "description": "Start a new conversation"},
                {"command": "help", "description": "List the commands"},
            ]
            for scope in ("all_private_chats", "all_group_chats"):
                assert fake.commands[(scope, "")] == [
                    *host_commands,
                    {"command": "weather", "description": "Today's weather"},
                ]
                assert fake.commands[(scope, "de")] == [
                    *host_commands,
                    {"command": "weather", "description": "Das Wetter heute"},
                ]


async def test_an_update_recorded_before_a_crash_is_handled_at_start(
    tmp_path: Path, mode: str
) -> None:
    ada = new_user()
    target = Recorder()
    store = SQLiteStore(tmp_path / "state.db")
    with anyio.fail_after(TIMEOUT):
        async with fake_bot_api() as (fake, api_url):
            update = message(
                fake.next_update_id(),
                user_id=ada,
                chat=private_chat(ada),
                text="recorded, then the process died",
            )
            await store.open()
            key = f"{update['update_id']:020d}"
            await store.put_channel_records(
                [
                    ChannelRecord("telegram", "inbox", key, update),
                    ChannelRecord("telegram", "seen", key, {}, expires_at=1e12),
                ]
            )
            await store.close()
            async with telegram_host(target, tmp_path, mode, fake, api_url, store=store) as bot:
                await fake.wait_until(lambda: len(fake.sent_to(ada)) == 1)
                await bot.idle()
                assert target.calls == [["recorded, then the process died"]]
                assert await bot.host.store.list_channel_records("telegram", "inbox") == []
                await bot.send(update)  # and Telegram's redelivery is still recognised
                await bot.idle()
                await fake.settle()
                assert len(target.calls) == 1


async def test_polling_backs_off_while_another_poller_holds_the_bot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ada = new_user()
    target = Recorder()
    caplog.set_level(logging.WARNING, logger="agenthost.channels.telegram")
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            anyio.create_task_group() as tasks,
            httpx.AsyncClient() as client,
        ):
            url = f"{api_url}/bot{BOT_TOKEN}/getUpdates"

            async def other_poller() -> None:
                await client.post(url, json={"timeout": 2}, timeout=10)

            tasks.start_soon(other_poller)
            await fake.wait_until(lambda: bool(fake.called("getUpdates")))
            async with telegram_host(target, tmp_path, "polling", fake, api_url) as bot:
                await fake.wait_until(
                    lambda: any(c.status == 409 for c in fake.called("getUpdates"))
                )
                update = message(
                    fake.next_update_id(),
                    user_id=ada,
                    chat=private_chat(ada),
                    text="after the conflict",
                )
                await fake.wait_until(lambda: not fake._polling, timeout=5)
                assert await bot.exchange(update, ada) == ["after the conflict"]
    conflicts = [r for r in caplog.records if r.msg == "telegram polling failed; retrying"]
    assert conflicts and conflicts[0].error_type == "Conflict"  # type: ignore[attr-defined]


async def test_polling_records_the_offset_before_confirming(tmp_path: Path) -> None:
    grace, group = new_user(), new_group()
    target = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, "polling", fake, api_url) as bot,
        ):
            ignored = message(
                fake.next_update_id(),
                user_id=grace,
                chat=group_chat(group),
                text="not for the bot",
            )
            await bot.send(ignored)
            cursor = await bot.host.store.get_channel_record("telegram", "cursor", "offset")
            assert cursor is not None and cursor.value == {"offset": ignored["update_id"] + 1}
            # The next getUpdates confirmed it with that offset.
            await fake.wait_until(
                lambda: (
                    fake.called("getUpdates")[-1].params.get("offset") == ignored["update_id"] + 1
                )
            )
