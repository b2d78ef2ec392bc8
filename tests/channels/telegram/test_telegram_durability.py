"""Telegram under outages (issue 16): a stalled store does not leave the bot deaf, a reply
cut short by a failure still arrives (once), a rate-limited preview never holds up the
run, and an upgraded group keeps its conversation across a restart. Every test runs in
webhook and polling mode (where the fault is the poller's, polling only), under the
backend ``AGENTHOST_TEST_BACKEND`` names, against the fake Bot API on loopback."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agenthost import ChannelIdentity, HostMessage
from agenthost.sansio_core.delivery import DeliveryStatus, RetryPolicy
from tests.channels.telegram.conftest import (
    TIMEOUT,
    Recorder,
    fake_bot_api,
    http_get,
    telegram_host,
)
from tests.channels.telegram.telegram_updates import (
    BOT_USERNAME,
    group_chat,
    message,
    private_chat,
)

pytestmark = pytest.mark.anyio

_users = itertools.count(930_000_001)
FAST_RETRY = {"delivery_retry": RetryPolicy(base_seconds=0.05, cap_seconds=0.2)}
# Two Telegram messages' worth of plain words (a message holds at most 4096 characters).
LONG = " ".join(f"word{n}" for n in range(700))


def new_user() -> int:
    return next(_users)


async def test_a_part_that_went_out_is_not_pushed_again(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(
                Recorder(), tmp_path, mode, fake, api_url, host_options=FAST_RETRY
            ) as bot,
        ):
            hello = message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="hi")
            await bot.exchange(hello, ada)
            key = await bot.host.store.load_context(ChannelIdentity("telegram", str(ada)), None)
            assert key.isolation_key is not None
            fake.fail_sends(after=1, times=1)  # the first part goes out, the second fails
            [scheduled] = await bot.host.deliver(isolation_key=key.isolation_key, message=LONG)
            await fake.wait_until(lambda: len(fake.sent_to(ada)) >= 3)
            await fake.settle()
            found = await bot.host.store.get_delivery(scheduled.delivery_id)
    first, second = [m.text for m in fake.sent_to(ada)[1:]]
    assert first.startswith("word0 ") and second.endswith("word699")
    assert first != second
    assert found is not None and found.status is DeliveryStatus.DELIVERED
    assert found.attempts == 2 and found.parts_sent == 2


async def test_a_reply_cut_short_is_finished_by_the_outbox(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    target = Recorder(reply=lambda _: LONG)
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, mode, fake, api_url, host_options=FAST_RETRY) as bot,
        ):
            fake.fail_sends(after=1, times=1)  # Telegram fails the reply's second part
            await bot.send(
                message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="tell")
            )
            await fake.wait_until(lambda: len(fake.sent_to(ada)) >= 2)
            await bot.idle()
            await fake.settle()
            handed = await bot.host.list_deliveries()
    texts = [m.text for m in fake.sent_to(ada)]
    assert len(texts) == 2  # the first part once, then the rest, once
    assert texts[0].startswith("word0 ") and texts[1].endswith("word699")
    assert [(d.status, d.parts_sent) for d in handed] == [(DeliveryStatus.DELIVERED, 2)]
    assert target.calls == [["tell"]]  # the target ran once


class Streams:
    """Streams a few pieces with pauses, like a model thinking."""

    async def __call__(self, messages: list[HostMessage]) -> AsyncIterator[str]:
        for piece in ("One ", "two ", "three ", "four."):
            yield piece
            await anyio.sleep(0.15)


async def test_a_rate_limited_preview_is_skipped_not_waited_for(tmp_path: Path, mode: str) -> None:
    ada = new_user()
    with anyio.fail_after(10):  # waiting out the 30 s limit would fail here
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(Streams(), tmp_path, mode, fake, api_url) as bot,
        ):
            fake.rate_limit("sendMessageDraft", chat_id=ada, times=1, retry_after=30)
            await bot.send(
                message(fake.next_update_id(), user_id=ada, chat=private_chat(ada), text="go")
            )
            await fake.wait_until(lambda: len(fake.sent_to(ada)) == 1)
            await bot.idle()
            drafts = fake.called("sendMessageDraft")
    assert fake.sent_to(ada)[0].text == "One two three four."
    assert [call.status for call in drafts] == [429]  # and none while it lasted


async def test_an_upgraded_group_keeps_its_conversation_after_a_restart(
    tmp_path: Path, mode: str
) -> None:
    grace = new_user()
    group, supergroup = -4_000_000 - grace % 1000, -1_007_000_000_000 - grace
    target = Recorder()
    mention = f"@{BOT_USERNAME}"
    old_chat = {**group_chat(group), "type": "group"}
    with anyio.fail_after(TIMEOUT):
        async with fake_bot_api() as (fake, api_url):
            async with telegram_host(target, tmp_path, mode, fake, api_url) as bot:
                first = message(
                    fake.next_update_id(), user_id=grace, chat=old_chat, text=f"{mention} first"
                )
                assert await bot.exchange(first, group) == ["first"]
                # Telegram upgrades the group: a service message in the old chat says where
                # it went, and the old id is refused from then on.
                upgraded = message(
                    fake.next_update_id(),
                    user_id=grace,
                    chat=old_chat,
                    migrate_to_chat_id=supergroup,
                )
                await bot.send(upgraded)
                await bot.idle()
                fake.migrations[group] = supergroup
            # A new process: only the store remembers the upgrade.
            async with telegram_host(target, tmp_path, mode, fake, api_url) as bot:
                second = message(
                    fake.next_update_id(),
                    user_id=grace,
                    chat=group_chat(supergroup),
                    text=f"{mention} second",
                )
                assert await bot.exchange(second, supergroup) == ["first | second"]
    assert target.calls[-1][-1] == "second"


async def test_a_stalled_store_does_not_leave_the_poller_deaf(tmp_path: Path) -> None:
    ada = new_user()
    target = Recorder()
    with anyio.fail_after(60):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(target, tmp_path, "polling", fake, api_url) as bot,
        ):
            ready = f"{bot.base_url}/readiness"
            assert (await http_get(ready)).status_code == 200
            # Another process holds the write lock past the store's busy timeout.
            blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")
                fake.enqueue(
                    message(
                        fake.next_update_id(),
                        user_id=ada,
                        chat=private_chat(ada),
                        text="are you there?",
                    )
                )
                while (answer := await http_get(ready)).status_code == 200:
                    await anyio.sleep(0.2)
                assert answer.status_code == 503
                assert answer.json() == {"status": "degraded", "tasks_down": ["telegram poller"]}
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            # The poller comes back by itself and answers what was waiting.
            await fake.wait_until(lambda: len(fake.sent_to(ada)) == 1, timeout=30)
            assert fake.sent_to(ada)[0].text == "are you there?"
            while (await http_get(ready)).status_code != 200:
                await anyio.sleep(0.2)
    assert target.calls == [["are you there?"]]
